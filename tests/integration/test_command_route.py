"""The hot command route (sessions/command_route.py) answers as the DRF view does.

A request with `Content-Type: application/json; charset=utf-8` is left to Django, so each
case is sent both ways and the answers compared: status, body and headers.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import Api
from tests.prom import scrape, value
from tests.ws_viewer import ws_url

pytestmark = pytest.mark.integration

HOT = {"Content-Type": "application/json"}
VIA_DJANGO = {"Content-Type": "application/json; charset=utf-8"}
SAME_HEADERS = ("content-type", "x-frame-options", "x-content-type-options", "referrer-policy",
                "cross-origin-opener-policy", "retry-after", "www-authenticate")


def post(api: Api, path: str, body: bytes, headers: dict) -> httpx.Response:
    return api.http.post(path, content=body, headers=headers)


def both(api: Api, path: str, body: bytes) -> tuple[httpx.Response, httpx.Response]:
    return post(api, path, body, HOT), post(api, path, body, VIA_DJANGO)


def assert_same(hot: httpx.Response, slow: httpx.Response) -> None:
    assert hot.status_code == slow.status_code, (hot.text, slow.text)
    assert hot.content == slow.content
    for h in SAME_HEADERS:
        assert hot.headers.get(h) == slow.headers.get(h), h


def test_a_command_runs_the_same_both_ways(alice, session):
    path = f"/api/v1/sessions/{session['id']}/commands/"
    hot, slow = both(alice, path, b'{"command": "cd /tmp && echo hi", "wait": 10}')
    assert hot.status_code == slow.status_code == 201
    a, b = hot.json(), slow.json()
    assert set(a) == set(b)
    assert (a["output"], a["exit_code"], a["cwd"], a["status"]) == ("hi\n", 0, "/tmp", "succeeded")
    assert (b["output"], b["exit_code"], b["cwd"]) == ("hi\n", 0, "/tmp")
    assert b["seq"] == a["seq"] + 1
    for h in SAME_HEADERS:
        assert hot.headers.get(h) == slow.headers.get(h), h
    # Without wait: queued at once, then it ends.
    queued = post(alice, path, b'{"command": "sleep 0.2; echo later"}', HOT)
    assert queued.status_code == 201 and queued.json()["status"] in ("queued", "running")
    done = alice.wait_command(session["id"], queued.json()["id"])
    assert done["output"] == "later\n"


def test_commands_are_audited_either_way(stack, alice, session):
    markers = {}
    for how, headers in (("hot", HOT), ("django", VIA_DJANGO)):
        markers[how] = uuid.uuid4().hex
        r = post(alice, f"/api/v1/sessions/{session['id']}/commands/",
                 f'{{"command": "echo {markers[how]}"}}'.encode(), headers)
        assert r.status_code == 201
        markers[how] = (markers[how], r.json()["id"])
    out = stack.config.manage("vterm_audit_export", "--action", "command.run", "--session", session["id"]).stdout
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    for marker, command_id in markers.values():
        (ev,) = [e for e in events if e["detail"].get("command_id") == command_id]
        assert marker in ev["detail"]["command"]
        assert ev["user"] == "alice" and ev["remote_addr"] == "127.0.0.1"


@pytest.mark.parametrize("body", [
    b'{"command": ""}',
    b'{"command": "true", "wait": -1}',
    b'{"command": "true", "timeout": "soon"}',
    b'{"command": "true", "idle_timeout": 0}',
    b'{"command": "true", "idle_timeout": -2.5}',
    b'{"command": "true", "idle_timeout": true}',
    b'{"command": "true", "idle_timeout": 1e12}',
    b'{"command": "a\\u0000b"}',
    b'["true"]',
    b'{"command": NaN}',
    b'{"command": ',
    b'{"cmd": "true"}',
])
def test_bad_bodies_get_the_same_400(alice, session, body):
    hot, slow = both(alice, f"/api/v1/sessions/{session['id']}/commands/", body)
    assert hot.status_code == 400
    assert_same(hot, slow)


def test_idle_timeout_both_ways(alice, session):
    path = f"/api/v1/sessions/{session['id']}/commands/"
    hot, slow = both(alice, path, b'{"command": "true", "idle_timeout": 0}')
    assert hot.status_code == 400 and "idle_timeout" in hot.json()
    assert_same(hot, slow)
    hot, slow = both(alice, path, b'{"command": "echo start; sleep 5", "idle_timeout": 0.5, "wait": 20}')
    for r in (hot, slow):
        assert r.status_code == 201
        body = r.json()
        assert (body["status"], body["reason"]) == ("timed_out", "no output for 0.5 s")
        assert body["output"].startswith("start\n")
        assert body["idle_timeout"] == 0.5


def test_someone_elses_or_no_session_is_the_same_404(alice, bob, session):
    for sid in (session["id"], str(uuid.uuid4())):
        hot, slow = both(bob, f"/api/v1/sessions/{sid}/commands/", b'{"command": "id"}')
        assert hot.status_code == 404
        assert_same(hot, slow)


def test_an_ended_session_is_the_same_409(alice):
    s = alice.create_session()
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")
    deadline = time.monotonic() + 20
    while alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["status"] != "terminated":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    hot, slow = both(alice, f"/api/v1/sessions/{s['id']}/commands/", b'{"command": "true"}')
    assert hot.status_code == 409
    assert_same(hot, slow)


def test_bad_tokens_get_the_same_401(stack, session):
    for auth in ("Bearer nope", "Bearer", "Token abc", "Bearer a b"):
        api = Api(stack.url, "x")
        api.http.headers["Authorization"] = auth
        hot, slow = both(api, f"/api/v1/sessions/{session['id']}/commands/", b'{"command": "true"}')
        assert hot.status_code == 401, auth
        assert_same(hot, slow)


def test_two_authorization_headers_get_the_same_401(alice, session):
    """Both roads read the header joined as Django joins repeated headers: never the last one alone."""
    path = f"/api/v1/sessions/{session['id']}/commands/"
    two = [("Authorization", "Bearer nope"), ("Authorization", f"Bearer {alice.token}")]
    hot = alice.http.post(path, content=b'{"command": "true"}', headers=[*HOT.items(), *two])
    slow = alice.http.post(path, content=b'{"command": "true"}', headers=[*VIA_DJANGO.items(), *two])
    assert hot.status_code == 401
    assert_same(hot, slow)


def _ws_close_code(stack, sid: str, token: str) -> int:
    with connect(ws_url(stack.url, sid), additional_headers={"Authorization": f"Bearer {token}"},
                 open_timeout=30) as ws:
        try:
            frame = ws.recv(timeout=30)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
    raise AssertionError(f"expected a close, got a frame: {frame[:200]}")


@pytest.mark.parametrize("revoke", [
    "from rest_framework.authtoken.models import Token; Token.objects.filter(key='{token}').delete()",
    "from django.contrib.auth import get_user_model as g; g().objects.filter(username='{user}').update(is_active=False)",
], ids=["deleted token", "deactivated user"])
def test_revoked_credentials_are_refused_at_once_on_every_road(stack, revoke):
    """No web process remembers a token (sessions/auth.py): the call right after the revocation is
    refused on the hot route, through DRF, and on a WebSocket handshake."""
    user = f"revoked-{uuid.uuid4().hex[:8]}"
    api = Api(stack.url, stack.token(user))
    sid = api.create_session()["id"]
    path = f"/api/v1/sessions/{sid}/commands/"
    # Each road has just let the token in (a cache, if there were one, would hold it now).
    assert post(api, path, b'{"command": "true", "wait": 10}', HOT).status_code == 201
    assert post(api, path, b'{"command": "true", "wait": 10}', VIA_DJANGO).status_code == 201
    assert api.http.get("/api/v1/sessions/").status_code == 200
    stack.config.manage("shell", "-c", revoke.format(token=api.token, user=user))
    hot, slow = both(api, path, b'{"command": "true"}')
    assert hot.status_code == 401, hot.text
    assert_same(hot, slow)
    assert api.http.get("/api/v1/sessions/").status_code == 401
    assert _ws_close_code(stack, sid, api.token) == 4401


def test_a_chunked_body_is_served(alice, session):
    def chunks():
        yield b'{"command": "echo '
        yield b'chunked", "wait": 10}'
    r = alice.http.post(f"/api/v1/sessions/{session['id']}/commands/", content=chunks(), headers=HOT)
    assert r.status_code == 201 and r.json()["output"] == "chunked\n"


def test_a_disallowed_host_gets_djangos_400_both_ways(alice, session):
    """ALLOWED_HOSTS is Django's CommonMiddleware's check on both roads (vterm_project/middleware_run.py)."""
    path = f"/api/v1/sessions/{session['id']}/commands/"
    hot = post(alice, path, b'{"command": "echo hi"}', {**HOT, "Host": "evil.example"})
    slow = post(alice, path, b'{"command": "echo hi"}', {**VIA_DJANGO, "Host": "evil.example"})
    assert hot.status_code == 400
    assert_same(hot, slow)
    # Nothing ran.
    commands = alice.http.get(f"/api/v1/sessions/{session['id']}/commands/").json()["results"]
    assert not any(c["command"] == "echo hi" for c in commands)


def test_the_same_headers_both_ways(alice, session):
    """The security headers come from Django's SecurityMiddleware and XFrameOptionsMiddleware on
    both roads: the same header names and values, for an answer and for an error."""
    path = f"/api/v1/sessions/{session['id']}/commands/"
    for body, status in ((b'{"command": "true", "wait": 10}', 201), (b'{"command": "true"}', None)):
        hot, slow = both(alice, path if status else f"/api/v1/sessions/{uuid.uuid4()}/commands/", body)
        assert hot.status_code == slow.status_code == (status or 404)
        assert hot.headers["x-frame-options"] == "DENY"
        assert hot.headers["x-content-type-options"] == "nosniff"
        assert hot.headers["referrer-policy"] == "same-origin"
        assert hot.headers["cross-origin-opener-policy"] == "same-origin"
        varying = {"date", "server", "content-length"}
        assert {k: v for k, v in hot.headers.items() if k not in varying} \
            == {k: v for k, v in slow.headers.items() if k not in varying}


def test_both_ways_are_counted_in_django_prometheus_request_series(stack, alice, session):
    """django-prometheus' middleware counts both roads (the hot route runs it: vterm_project/middleware_run.py):
    one command each way adds the same to each series."""
    path = f"/api/v1/sessions/{session['id']}/commands/"
    route = {"view": "command-list", "method": "POST"}
    counted = [("django_http_requests_total_by_view_transport_method_total", {**route, "transport": "http"}),
               ("django_http_responses_total_by_status_view_method_total", {**route, "status": "201"}),
               ("django_http_requests_latency_seconds_by_view_method_count", route)]
    before = scrape(stack.url)
    assert post(alice, path, b'{"command": "true", "wait": 10}', HOT).status_code == 201
    after_hot = scrape(stack.url)
    assert post(alice, path, b'{"command": "true", "wait": 10}', VIA_DJANGO).status_code == 201
    after_django = scrape(stack.url)
    for name, labels in counted:
        hot = value(after_hot, name, **labels) - value(before, name, **labels)
        via_django = value(after_django, name, **labels) - value(after_hot, name, **labels)
        assert hot == via_django == 1, (name, hot, via_django)
    # An error answered by the hot route is counted with its status.
    assert post(alice, f"/api/v1/sessions/{uuid.uuid4()}/commands/", b'{"command": "true"}', HOT).status_code == 404
    after_404 = scrape(stack.url)
    assert value(after_404, "django_http_responses_total_by_status_total", status="404") \
        == value(after_django, "django_http_responses_total_by_status_total", status="404") + 1
