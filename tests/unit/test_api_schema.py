"""The OpenAPI schema takes exactly what the serializers take.

For each request body, the schema drf-spectacular generates (with sessions/api_schema.py's
additions) is checked with an ECMA-262 JSON Schema validator (jsonschema-rs, as schemathesis
and most generated clients read patterns) against the serializer's own verdict, on bodies drawn
to hit the edges: control characters, Unicode spaces, reserved names, key names, numbers given as
strings or booleans, zero and negative seconds. The live run is
tests/integration/test_schemathesis.py; this one shows a disagreement with the input that causes it.
"""

from __future__ import annotations

import jsonschema_rs
import pytest
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sessions.serializers import (
    RESERVED_ENV,
    CommandCreateSerializer,
    InputSerializer,
    ResizeSerializer,
    SessionCreateSerializer,
)
from workers.tmux.protocol import valid_key

pytestmark = pytest.mark.django_db(databases=[])  # the serializers read nothing; the schema needs the URLconf

# Characters where the rules have edges: controls, CR/LF/tab, Python's and ECMA's spaces, NUL, DEL.
EDGE_CHARS = ["\x00", "\x01", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1b", "\x1c", "\x1f", " ", "\x7f",
              "\x85", "\xa0", "\u1680", "\u2000", "\u200a", "\u2028", "\u202f", "\u3000", "\ufeff",
              "a", "Z", "_", "0", "/", "-", ".", "é", "😀"]
texts = st.text(alphabet=st.sampled_from(EDGE_CHARS) | st.characters(codec="utf-8"), max_size=12)
numbers = st.one_of(st.integers(-5, 2000), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from([0, 0.0, -0.0, 1e-300, 5e-324, 120.0, 120.5, 1e300]))
anything = st.one_of(st.none(), st.booleans(), numbers, texts, st.lists(texts, max_size=2),
                     st.dictionaries(texts, texts, max_size=2))
env_names = st.one_of(st.sampled_from(sorted(RESERVED_ENV) + ["VTERM_X", "__VTERM", "A", "_a1", "1A", "A\n",
                                                              "a-b", "A" * 256, "B" * 255]), texts)
key_names = st.one_of(st.sampled_from(["C-c", "M-x", "S-Up", "C-M-S-a", "C-C-C-C-c", "Enter", "F12", "F13", "C-",
                                       "-", "M--", "Enter\n", "ab", "é", "C-Enterx", " ", "~"]), texts)


@pytest.fixture(scope="module")
def components():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return schema["components"]["schemas"]


def _agree(components, name: str, serializer_class, body) -> None:
    # With the other components beside it, where its $refs point (#/components/schemas/...).
    schema = {**components[name], "components": {"schemas": components}}
    by_schema = jsonschema_rs.Draft202012Validator(schema).is_valid(body)
    by_server = serializer_class(data=body).is_valid()
    assert by_schema == by_server, f"{name}: schema says {by_schema}, server says {by_server} for {body!r}"


def _bodies(**fields) -> st.SearchStrategy[dict]:
    """Objects with any subset of ``fields`` (each drawn from its strategy or from anything at all)."""
    return st.fixed_dictionaries({}, optional={k: st.one_of(v, anything) for k, v in fields.items()})


fast = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fast
@given(body=_bodies(name=texts, cwd=st.one_of(texts, texts.map(lambda t: "/" + t)),
                    env=st.dictionaries(env_names, texts, max_size=3), cols=numbers, rows=numbers,
                    limits=st.dictionaries(st.sampled_from(["processes", "memory_mb", "cpu_weight", "bogus"]),
                                           numbers, max_size=3)))
def test_session_create(components, body):
    _agree(components, "SessionCreate", SessionCreateSerializer, body)


notify_urls = st.one_of(
    st.sampled_from(["http://127.0.0.1:8080/hook", "HTTPS://a.b/c?d=e", "http://[::1]/", "http://[zz]/", "ftp://a/",
                     "http://u@a/", "http://a/#f", "http://a:123456/", "http://a.", "http://-a/", "http://a/ b",
                     "http://a/\u00e9", "http://" + "a" * 63 + ".b/", "http://" + "a" * 64 + "/",
                     "http://a/" + "x" * 2039, "http://a/" + "x" * 2040, "http://a\n", " http://a/", ""]),
    texts.map(lambda t: "http://" + t), texts.map(lambda t: "https://a.b/" + t))


@fast
@given(body=_bodies(command=texts, timeout=numbers, wait=numbers, notify_url=notify_urls))
def test_command_create(components, body):
    _agree(components, "CommandCreate", CommandCreateSerializer, body)


@fast
@given(body=_bodies(data=texts, keys=st.lists(key_names, max_size=3)))
def test_input(components, body):
    _agree(components, "Input", InputSerializer, body)


@fast
@given(body=_bodies(cols=numbers, rows=numbers))
def test_resize(components, body):
    _agree(components, "Resize", ResizeSerializer, body)


@pytest.mark.parametrize("body, ok", [
    ({"command": ""}, False), ({"command": " \n\t"}, False), ({"command": "\u3000"}, False),
    ({"command": "\r\n"}, False), ({"command": "echo a\r\necho b"}, True), ({"command": "echo\r"}, False),
    ({"command": "x", "timeout": 0}, False), ({"command": "x", "timeout": 0.001}, True),
    ({"command": "x", "wait": 0}, True), ({"command": "x", "timeout": "5"}, False),
    ({"command": "x", "timeout": None, "wait": None}, True),
])
def test_command_create_edges(components, body, ok):
    """The three "schema-valid request rejected" of issue 15 (empty command, timeout 0, a key name) and kin."""
    _agree(components, "CommandCreate", CommandCreateSerializer, body)
    assert CommandCreateSerializer(data=body).is_valid() is ok


@pytest.mark.parametrize("key", ["C-c", "Enter", "F5", "a", "NotAKey", "F13", "C-", " C-c\n", "ab", " "])
def test_key_names_as_the_driver_reads_them(components, key):
    """The driver's own check (workers/tmux/protocol.py), after DRF cut the spaces at either end."""
    by_schema = jsonschema_rs.Draft202012Validator(components["Input"]).is_valid({"keys": [key]})
    assert by_schema is valid_key(key.strip())
