"""Limits that hold across web nodes: session quota, command/input rate, input bytes, body size, login throttle.

A stack of its own with small limits and two Daphne processes on one Redis and one
database: whatever one node allowed, the other knows.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import Api, _keep_logs, make_stack
from vterm_project.devstack import BIN, Proc, free_port

pytestmark = pytest.mark.integration

LIMITS = {
    "VTERM_MAX_SESSIONS_PER_USER": 2,
    "VTERM_COMMAND_RATE": 0.5,
    "VTERM_COMMAND_BURST": 3,
    "VTERM_INPUT_RATE": 0.5,
    "VTERM_INPUT_BURST": 3,
    "VTERM_INPUT_BYTES_RATE": 1000,
    "VTERM_INPUT_BYTES_BURST": 100_000,
    "VTERM_LOGIN_MAX_FAILURES": 3,
    "VTERM_LOGIN_WINDOW": 120,
    "VTERM_MAX_REQUEST_BYTES": 100_000,
}


@pytest.fixture(scope="module")
def two_webs(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    # A Redis prefix of its own: fresh buckets and login counters, whatever ran before.
    st = make_stack(redis_url, tmp, backends=1, prefix="lim", VTERM_REDIS_PREFIX=f"lim{uuid.uuid4().hex[:6]}:",
                    **LIMITS)
    try:
        st.start()
        port2 = free_port()
        st.start_process(Proc("web2", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port2),
                                       "vterm_project.asgi:application"]))
        url2 = f"http://127.0.0.1:{port2}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url2 + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "second web process did not start"
            time.sleep(0.2)
        yield st, st.url, url2
    finally:
        st.stop()
        _keep_logs(st, "limits")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def users(two_webs):
    st, url1, url2 = two_webs
    tok = st.token("quota-user")
    return Api(url1, tok), Api(url2, tok), st


def _retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    value = int(r.headers["Retry-After"])
    assert value >= 1
    return value


def test_session_quota_holds_across_web_nodes(users):
    a1, a2, _ = users
    s1 = a1.create_session()
    s2 = a2.create_session()
    for api in (a1, a2):
        r = api.http.post("/api/v1/sessions/", json={})
        _retry_after(r)
        assert "2" in r.json()["detail"]
    # Ending one frees a place, on either node.
    assert a2.http.delete(f"/api/v1/sessions/{s1['id']}/").status_code == 204
    deadline = time.monotonic() + 15
    while True:
        r = a1.http.post("/api/v1/sessions/", json={})
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the shell takes a moment to end
    assert r.status_code == 201, r.text
    for sid in (s2["id"], r.json()["id"]):
        a1.http.delete(f"/api/v1/sessions/{sid}/")


def test_session_quota_is_not_raced_past(two_webs):
    """Six creations at once, three on each node: exactly the quota (2) succeed."""
    st, url1, url2 = two_webs
    tok = st.token("racer")
    results: list[int] = []
    ids: list[str] = []

    def create(url):
        r = httpx.post(url + "/api/v1/sessions/", json={}, headers={"Authorization": f"Bearer {tok}"}, timeout=60)
        results.append(r.status_code)
        if r.status_code == 201:
            ids.append(r.json()["id"])
    threads = [threading.Thread(target=create, args=(u,)) for u in (url1, url2) * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201, 201, 429, 429, 429, 429], results
    for sid in ids:
        httpx.delete(f"{url1}/api/v1/sessions/{sid}/", headers={"Authorization": f"Bearer {tok}"})


def test_command_rate_is_one_bucket_for_all_web_nodes(two_webs):
    st, url1, url2 = two_webs
    tok = st.token("rate-user")
    a1, a2 = Api(url1, tok), Api(url2, tok)
    sid = a1.create_session()["id"]
    # Burst 3, shared: two on node 1, one on node 2, then node 2 (and node 1) refuse.
    codes = [a.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"}).status_code
             for a in (a1, a1, a2)]
    assert codes == [201, 201, 201]
    r = a2.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"})
    wait = _retry_after(r)
    assert "command" in r.json()["detail"]
    _retry_after(a1.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"}))
    # Another user's bucket is their own.
    other = Api(url2, st.token("rate-other"))
    osid = other.create_session()["id"]
    assert other.http.post(f"/api/v1/sessions/{osid}/commands/", json={"command": "true"}).status_code == 201
    # After Retry-After the bucket has a token again.
    time.sleep(wait)
    assert a2.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"}).status_code == 201
    a1.http.delete(f"/api/v1/sessions/{sid}/")
    other.http.delete(f"/api/v1/sessions/{osid}/")


def test_input_rate_is_limited_too(two_webs):
    st, url1, url2 = two_webs
    tok = st.token("input-user")
    a1, a2 = Api(url1, tok), Api(url2, tok)
    sid = a1.create_session()["id"]
    codes = [a.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "x"}).status_code for a in (a1, a2, a1)]
    assert codes == [202, 202, 202]
    r = a2.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["C-c"]})
    _retry_after(r)
    assert "input" in r.json()["detail"]
    a1.http.delete(f"/api/v1/sessions/{sid}/")


def test_input_bytes_are_one_budget_for_all_web_nodes(two_webs):
    """Keystrokes spend bytes too (100,000 here): two 60,000-character inputs are one too many,
    whichever node and road (REST, WebSocket) they take; another user's budget is their own."""
    from tests.ws_viewer import Viewer

    st, url1, url2 = two_webs
    tok = st.token("bytes-user")
    a1, a2 = Api(url1, tok), Api(url2, tok)
    sid = a1.create_session()["id"]
    big = "y" * 60_000
    assert a1.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": big}).status_code == 202
    v = Viewer(url2, sid, token=tok)
    v.send(type="input", data=big)
    err = v.until(lambda f: f["type"] == "error", timeout=60)
    assert err["code"] == "throttled" and "Too many input bytes" in err["message"], err
    v.close()
    r = a2.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": big})
    _retry_after(r)
    assert "Too many input bytes" in r.json()["detail"]
    other = Api(url2, st.token("bytes-other"))
    osid = other.create_session()["id"]
    assert other.http.post(f"/api/v1/sessions/{osid}/input/", json={"data": big}).status_code == 202
    for api, s in ((a1, sid), (other, osid)):
        api.http.delete(f"/api/v1/sessions/{s}/")


def test_request_body_size_is_limited_with_413(two_webs):
    st, url1, url2 = two_webs
    tok = st.token("body-user")
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    big = b'{"name": "' + b"x" * 200_000 + b'"}'
    for url in (url1, url2):
        r = httpx.post(url + "/api/v1/sessions/", content=big, headers=headers, timeout=30)
        assert r.status_code == 413 and "100000 bytes" in r.json()["detail"]

        def chunks():
            for _ in range(50):
                yield b"x" * 10_000
        # No Content-Length (chunked): counted as it arrives.
        r = httpx.post(url + "/api/v1/sessions/", content=chunks(), headers=headers, timeout=30)
        assert r.status_code == 413
    # Under the limit, a field's own limit answers with a 400 naming the field.
    r = httpx.post(url1 + "/api/v1/sessions/", json={"name": "x" * 5000}, headers=headers, timeout=30)
    assert r.status_code == 400 and "name" in r.json()
    # Deeply nested JSON is a 400, not a 500.
    r = httpx.post(url1 + "/api/v1/sessions/", content=b"[" * 50_000 + b"]" * 50_000, headers=headers, timeout=30)
    assert r.status_code == 400, r.text


def _login(url: str, username: str, password: str) -> httpx.Client:
    web = httpx.Client(base_url=url, timeout=30, headers={"Referer": url + "/"})
    page = web.get("/api-auth/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    web.post("/api-auth/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token})
    return web


def test_login_attempts_are_throttled_across_web_nodes(two_webs):
    st, url1, url2 = two_webs
    st.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g\n"
                     "for n in ('erin', 'frank'):\n"
                     "    u,_=g().objects.get_or_create(username=n); u.set_password(n + '-pass-123'); u.save()")
    assert "sessionid" in _login(url1, "erin", "erin-pass-123").cookies  # the right password works
    for url in (url1, url2, url1):
        assert "sessionid" not in _login(url, "erin", "wrong").cookies
    # Three failures: now even the right password is refused, on either node.
    for url in (url2, url1):
        assert "sessionid" not in _login(url, "erin", "erin-pass-123").cookies
    # The browser's own login page says so: 429 with Retry-After.
    web = httpx.Client(base_url=url2, timeout=30, headers={"Referer": url2 + "/"})
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', web.get("/login/").text).group(1)
    r = web.post("/login/", data={"username": "erin", "password": "erin-pass-123", "csrfmiddlewaretoken": token})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "Too many failed logins" in r.text and "sessionid" not in web.cookies
    # Another user from the same address is not locked out by erin's failures.
    assert "sessionid" in _login(url2, "frank", "frank-pass-123").cookies
    out = st.config.manage("vterm_audit_export", "--action", "auth.login_throttled").stdout
    assert '"username": "erin"' in out and "frank" not in out


@pytest.mark.parametrize("kind", ["command", "input"])
def test_websocket_frames_spend_the_same_buckets(two_webs, kind):
    """`run` frames spend the command bucket and `input` frames the input bucket, shared with
    REST across web nodes: over it, an error frame, and the connection carries on."""
    from tests.ws_viewer import Viewer

    st, url1, url2 = two_webs
    tok = st.token(f"ws-{kind}-user")
    api = Api(url1, tok)
    sid = api.create_session()["id"]
    v = Viewer(url2, sid, token=tok)
    if kind == "command":
        for i in range(3):
            v.send(type="run", command="true", ref=f"r{i}")
            v.until(lambda f, i=i: f["type"] == "command" and f.get("ref") == f"r{i}", timeout=60)
        v.send(type="run", command="true", ref="over")
        rest_path, rest_body = "commands", {"command": "true"}
    else:
        for _ in range(6):  # a burst of 3 at 0.5/s: the later frames find the bucket empty
            v.send(type="input", data="x")
        rest_path, rest_body = "input", {"data": "y"}
    err = v.until(lambda f: f["type"] == "error", timeout=60)
    assert err["code"] == "throttled" and f"Too many {kind} requests" in err["message"], err
    # The REST side on the other node finds the same empty bucket.
    _retry_after(api.http.post(f"/api/v1/sessions/{sid}/{rest_path}/", json=rest_body))
    v.send(type="ping")
    v.until(lambda f: f["type"] == "pong", timeout=30)  # the connection carries on
    v.close()
    api.http.delete(f"/api/v1/sessions/{sid}/")
