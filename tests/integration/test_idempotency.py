"""Idempotency-Key on creating sessions and commands (docs/api.md, sessions/idempotency.py), live.

Commands are sent both ways they can be served: by the hot route (sessions/command_route.py) and,
with `Content-Type: application/json; charset=utf-8`, which that route leaves to Django, by the DRF
view (tests/integration/test_command_route.py does the same).
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Api

pytestmark = pytest.mark.integration

HOT = {"Content-Type": "application/json"}
VIA_DJANGO = {"Content-Type": "application/json; charset=utf-8"}
roads = pytest.mark.parametrize("road", [HOT, VIA_DJANGO], ids=["hot-route", "drf-view"])


def post(api: Api, path: str, body: dict, key, road: dict = HOT) -> httpx.Response:
    return api.http.post(path, content=json.dumps(body).encode(), headers={**road, "Idempotency-Key": key})


def commands_path(session_id: str) -> str:
    return f"/api/v1/sessions/{session_id}/commands/"


def history(api: Api, session_id: str) -> list[dict]:
    r = api.http.get(commands_path(session_id))
    assert r.status_code == 200
    assert r.json()["next"] is None  # one page: the sessions here run a few commands
    return r.json()["results"]


def ran(api: Api, session_id: str, command: str) -> list[dict]:
    return [c for c in history(api, session_id) if c["command"] == command]


def until(check, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return got


@roads
def test_a_repeat_runs_nothing_and_answers_the_command_as_it_is_now(alice, session, road):
    key, marker = str(uuid.uuid4()), uuid.uuid4().hex
    body = {"command": f"echo {marker}"}
    first = post(alice, commands_path(session["id"]), body, key, road)
    assert first.status_code == 201, first.text
    again = post(alice, commands_path(session["id"]), body, key, road)
    assert again.status_code == 201, again.text
    assert again.json()["id"] == first.json()["id"]
    done = alice.wait_command(session["id"], first.json()["id"])
    assert done["status"] == "succeeded" and done["output"] == f"{marker}\n"
    # Later repeats answer its current JSON, bare or as the draft's quoted string.
    for same in (key, f'"{key}"'):
        later = post(alice, commands_path(session["id"]), body, same, road)
        assert later.status_code == 201 and later.json() == done
    assert [c["id"] for c in ran(alice, session["id"], body["command"])] == [first.json()["id"]]


@roads
def test_a_repeat_with_wait_waits_as_the_first_would(alice, session, road):
    key = str(uuid.uuid4())
    body = {"command": "read x; echo got $x", "wait": 3}
    first = post(alice, commands_path(session["id"]), body, key, road)
    assert first.status_code == 201 and first.json()["status"] in ("queued", "running")  # its wait passed
    with ThreadPoolExecutor(1) as pool:
        again = pool.submit(post, alice, commands_path(session["id"]), body, key, road)
        time.sleep(0.5)  # the repeat waits meanwhile (without waiting it would answer "running")
        assert alice.http.post(f"/api/v1/sessions/{session['id']}/input/", json={"data": "go\n"}).status_code == 202
        again = again.result()
    assert again.status_code == 201, again.text
    got = again.json()
    assert (got["id"], got["status"]) == (first.json()["id"], "succeeded")
    assert got["output"].endswith("got go\n")  # after the echo of the keystrokes
    assert len(ran(alice, session["id"], body["command"])) == 1


@roads
def test_a_repeat_while_the_first_is_handled_is_409(alice, session, road):
    key = str(uuid.uuid4())
    body = {"command": f"read x; echo {uuid.uuid4().hex} $x", "wait": 60}
    path = commands_path(session["id"])
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, alice, path, body, key, road)
        until(lambda: ran(alice, session["id"], body["command"]))  # the first holds the key, and waits
        busy = post(alice, path, body, key, road)
        assert busy.status_code == 409, busy.text
        assert "Idempotency-Key" in busy.json()["detail"]
        other = post(alice, path, {**body, "wait": 1}, key, road)  # another body is still another request
        assert other.status_code == 422, other.text
        assert alice.http.post(f"/api/v1/sessions/{session['id']}/input/", json={"data": "go\n"}).status_code == 202
        first = first.result()
    assert first.status_code == 201 and first.json()["status"] == "succeeded", first.text
    after = post(alice, path, body, key, road)  # answered: a repeat gets it
    assert after.status_code == 201 and after.json() == first.json()
    assert len(ran(alice, session["id"], body["command"])) == 1


@roads
def test_the_same_key_with_another_body_is_422_naming_the_header(alice, session, road):
    key = str(uuid.uuid4())
    path = commands_path(session["id"])
    assert post(alice, path, {"command": "echo a"}, key, road).status_code == 201
    for body in ({"command": "echo b"}, {"command": "echo a", "wait": 5}, {"command": "echo a", "timeout": 9}):
        r = post(alice, path, body, key, road)
        assert r.status_code == 422, (body, r.text)
        assert "Idempotency-Key" in r.json()["detail"]
    # ... and for another session, or for creating a session.
    other = alice.create_session()
    try:
        assert post(alice, commands_path(other["id"]), {"command": "echo a"}, key, road).status_code == 422
        assert post(alice, "/api/v1/sessions/", {}, key).status_code == 422
        assert ran(alice, other["id"], "echo a") == []
    finally:
        alice.http.delete(f"/api/v1/sessions/{other['id']}/")
    assert ran(alice, session["id"], "echo b") == []


def test_keys_are_each_users_own(alice, bob, session):
    key = str(uuid.uuid4())
    theirs = bob.create_session()
    try:
        a = post(alice, commands_path(session["id"]), {"command": "echo alice"}, key)
        b = post(bob, commands_path(theirs["id"]), {"command": "echo bob"}, key)
        assert a.status_code == b.status_code == 201
        assert a.json()["id"] != b.json()["id"]
        assert bob.wait_command(theirs["id"], b.json()["id"])["output"] == "bob\n"
        # Bob's key does not give him Alice's command, nor the other way round.
        assert post(bob, commands_path(session["id"]), {"command": "echo alice"}, key).status_code == 422
    finally:
        bob.http.delete(f"/api/v1/sessions/{theirs['id']}/")


@roads
@pytest.mark.parametrize("value", [b"", b"k" * 256, b'"' + b"k" * 254 + b'"', b"caf\xe9", b"a\x80b"],
                         ids=["empty", "256", "quoted-256", "latin-1", "non-ascii"])
def test_bad_keys_are_400_naming_the_header(alice, session, road, value):
    path = commands_path(session["id"])
    body = {"command": f"echo {uuid.uuid4().hex}"}
    r = post(alice, path, body, value, road)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["Idempotency-Key"]
    assert ran(alice, session["id"], body["command"]) == []
    r = post(alice, "/api/v1/sessions/", {}, value)
    assert r.status_code == 400 and list(r.json()) == ["Idempotency-Key"]


def test_a_key_at_the_limits_is_taken(alice, session):
    for key in ("k", "k" * 255, "a b", '"quoted \\" key"', '""', "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"):
        assert post(alice, commands_path(session["id"]), {"command": "true"}, key).status_code == 201, key


@roads
def test_a_request_that_failed_and_made_nothing_lets_its_key_go(alice, session, road):
    key = str(uuid.uuid4())
    missing = commands_path(str(uuid.uuid4()))
    for _ in range(2):  # a retry of the failed request runs again: the same 404, not a replay
        assert post(alice, missing, {"command": "true"}, key, road).status_code == 404
    r = post(alice, commands_path(session["id"]), {"command": "echo freed"}, key, road)
    assert r.status_code == 201, r.text  # not 422: the key was let go


def test_session_creation_is_idempotent(alice):
    key = str(uuid.uuid4())
    body = {"name": f"idem-{uuid.uuid4().hex[:8]}", "env": {"IDEM": "1"}}
    before = alice.http.get("/api/v1/sessions/").json()["count"]
    first = post(alice, "/api/v1/sessions/", body, key)
    assert first.status_code == 201, first.text
    try:
        again = post(alice, "/api/v1/sessions/", {"env": {"IDEM": "1"}, "name": body["name"]}, key)  # fields reordered
        assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
        assert again.json()["status"] == "active"
        assert alice.http.get("/api/v1/sessions/").json()["count"] == before + 1
        assert post(alice, "/api/v1/sessions/", {**body, "cols": 100}, key).status_code == 422
        # A repeat answers the session as it is now.
        assert alice.http.delete(f"/api/v1/sessions/{first.json()['id']}/").status_code == 204
        until(lambda: post(alice, "/api/v1/sessions/", body, key).json()["status"] == "terminated")
    finally:
        alice.http.delete(f"/api/v1/sessions/{first.json()['id']}/")


def test_a_session_that_could_not_start_lets_its_key_go(alice):
    key = str(uuid.uuid4())
    bad = {"cwd": f"/no/such/dir/{uuid.uuid4().hex}"}
    for _ in range(2):
        r = post(alice, "/api/v1/sessions/", bad, key)
        assert r.status_code == 400 and "cwd" in r.json(), r.text
    r = post(alice, "/api/v1/sessions/", {"name": "after a failure"}, key)
    assert r.status_code == 201, r.text
    alice.http.delete(f"/api/v1/sessions/{r.json()['id']}/")


def _die_holding(stack, api: Api, code: str) -> None:
    """Run ``code`` in a process of its own that claims an Idempotency-Key as ``api``'s user, as a web
    node would, with a lease 1 s longer than its own time, and then dies without a word (as a node that crashes mid-request)."""
    prelude = textwrap.dedent(f"""
        import os
        from rest_framework.authtoken.models import Token
        from sessions import idempotency, services
        idempotency.LEASE_MARGIN = 1.0
        user = Token.objects.get(key={api.token!r}).user
    """)
    stack.config.manage("shell", "-c", prelude + textwrap.dedent(code) + "\nos._exit(0)\n")


def test_a_node_that_died_after_running_the_command_leaves_it_to_the_repeat(stack, alice, session):
    key, body = str(uuid.uuid4()), {"command": f"echo {uuid.uuid4().hex}"}
    _die_holding(stack, alice, f"""
        services.command_submit(user, {session['id']!r}, command={body['command']!r}, idempotency_key={key!r})
    """)
    path = commands_path(session["id"])
    (made,) = ran(alice, session["id"], body["command"])
    r = until(lambda: (r := post(alice, path, body, key)).status_code != 409 and r)  # its lease lapses
    assert r.status_code == 201 and r.json()["id"] == made["id"]
    assert len(ran(alice, session["id"], body["command"])) == 1


def test_a_node_that_died_before_running_the_command_leaves_the_key_to_the_repeat(stack, alice, session):
    key, body = str(uuid.uuid4()), {"command": f"echo {uuid.uuid4().hex}"}
    _die_holding(stack, alice, f"""
        fingerprint = services.command_fingerprint({session['id']!r}, command={body['command']!r})
        idempotency.idempotency_claim(user.pk, {key!r}, fingerprint, seconds=3)
    """)
    path = commands_path(session["id"])
    assert post(alice, path, body, key).status_code == 409  # still being handled, as far as anyone knows
    r = until(lambda: (r := post(alice, path, body, key)).status_code != 409 and r)
    assert r.status_code == 201, r.text
    assert alice.wait_command(session["id"], r.json()["id"])["status"] == "succeeded"
    assert len(ran(alice, session["id"], body["command"])) == 1
    assert post(alice, path, body, key).json()["id"] == r.json()["id"]
