"""One tenant cannot stall or trick the web tier for others (issue 14, items 4-6, 8, 9).

A stack of its own, small limits, one backend (alice's and bob's sessions share it) and two
Daphne processes on one Redis and one database: bob hits each limit, alice carries on.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.conftest import Api, _keep_logs, make_stack
from tests.ws_viewer import Viewer, ws_url
from vterm_project.devstack import BIN, Proc, free_port

pytestmark = pytest.mark.integration

WINDOW_HIGH = 64 * 1024
LIMITS = {
    "VTERM_WS_MAX_PER_USER": 3,
    "VTERM_WS_RECHECK_INTERVAL": 1,
    "VTERM_WS_WINDOW_HIGH": WINDOW_HIGH,
    "VTERM_WS_WINDOW_LOW": 16 * 1024,
    # Burst 3, then one every 50 s: bob stays over the limit for the whole of a test, however slow the machine.
    **{f"VTERM_{kind}_{what}": value for kind in ("RESIZE", "INTERRUPT", "SCREEN", "RECORDING")
       for what, value in (("RATE", 0.02), ("BURST", 3))},
    "VTERM_TASK_EVENTS": 1,  # what Flower shows: the workers' task events
}


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tenants(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tenants")
    prefix = f"ten{uuid.uuid4().hex[:6]}:"  # fresh buckets and claims, whatever ran before
    st = make_stack(redis_url, tmp, backends=1, prefix="ten", VTERM_REDIS_PREFIX=prefix, **LIMITS)
    try:
        st.start()
        port2 = free_port()
        st.start_process(Proc("web2", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port2),
                                       "vterm_project.asgi:application"]))
        url2 = f"http://127.0.0.1:{port2}"
        _wait_http(url2)
        st.redis_prefix = prefix
        yield st, url2
    finally:
        st.stop()
        _keep_logs(st, "tenants")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(tenants) -> Api:
    st, _ = tenants
    return Api(st.url, st.token("alice"))


@pytest.fixture(scope="module")
def bob(tenants) -> Api:
    st, _ = tenants
    return Api(st.url, st.token("bob"))


@pytest.fixture(scope="module")
def sessions(alice, bob):
    a, b = alice.create_session(name="alice"), bob.create_session(name="bob")
    assert a["backend"] == b["backend"], "one backend: what bob does lands where alice works"
    yield a["id"], b["id"]
    alice.http.delete(f"/api/v1/sessions/{a['id']}/")
    bob.http.delete(f"/api/v1/sessions/{b['id']}/")


def _refused(url: str, headers: dict) -> tuple[list[dict], int]:
    """The frames a refused connection got, and the code it was closed with."""
    frames = []
    with connect(url, additional_headers=headers, open_timeout=30) as ws:
        try:
            while True:
                frames.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed as exc:
            return frames, exc.rcvd.code if exc.rcvd else -1


def _alice_is_fine(alice: Api, sid: str, viewer: Viewer | None = None) -> None:
    assert alice.run(sid, "echo alice-fine")["output"] == "alice-fine\n"
    if viewer is not None:
        viewer.send(type="ping")
        viewer.until(lambda f: f["type"] == "pong", timeout=30)


# -- item 4: flow control counts what was sent; open WebSockets per user ----------------------------

def test_acks_beyond_what_was_sent_are_refused_and_release_nothing(tenants, alice, bob, sessions, capsys):
    st, _ = tenants
    a_sid, b_sid = sessions
    # bob reads nothing after the snapshot; his session floods.
    v = Viewer(st.url, b_sid, token=bob.token, ack=False)
    snapshot_chars = sum(len(line) for line in v.snapshot["lines"])
    bob.run(b_sid, "seq 1 400000", wait=0)
    # Read until the window is full: from then on the server sends bob nothing until an ack.
    got = 0
    while snapshot_chars + got < WINDOW_HIGH:
        got += len(v.until(lambda f: f["type"] == "output", timeout=60)["data"])
    last_seq = v.position
    # bob acks far ahead of what he was sent, as a client that never reads would.
    bogus = 20
    for _ in range(bogus):
        v.send(type="ack", seq=10**15)
    v.send(type="ping")
    before = len(v.frames)
    v.until(lambda f: f["type"] == "pong", timeout=60)
    between = v.frames[before:-1]
    errors = [f for f in between if f["type"] == "error"]
    assert [f for f in between if f["type"] in ("output", "snapshot")] == [], "a refused ack released output"
    assert len(errors) == bogus and all(e["code"] == "invalid" for e in errors), between[:3]
    assert f"ack: seq: 1000000000000000 is beyond the last output sent to this viewer ({last_seq})" \
        in errors[0]["message"]
    # alice, on the same backend, meanwhile: an honest viewer gets all of her output.
    av = Viewer(st.url, a_sid, token=alice.token)
    av.send(type="run", command="seq 1 20000", ref="a")
    assert av.command_end("a")["command"]["status"] == "succeeded"
    av.until_output("\n20000")
    assert not av.breaks
    _alice_is_fine(alice, a_sid, av)
    # bob's honest ack of what he has resumes his output (the window counts from what was sent).
    v.send(type="ack", seq=last_seq)
    nxt = v.until(lambda f: f["type"] in ("output", "snapshot"), timeout=60)
    assert nxt["seq"] > last_seq
    bob.http.post(f"/api/v1/sessions/{b_sid}/input/", json={"keys": ["C-c"]})
    av.close()
    v.close()
    with capsys.disabled():
        print(f"\n[security] bob's {bogus} acks of seq 10^15 with {snapshot_chars + got} characters in flight "
              f"(window {WINDOW_HIGH}): {len(errors)} `invalid` error frames, 0 more output")


def test_open_websockets_per_user_are_capped_across_web_nodes(tenants, alice, bob, sessions):
    st, url2 = tenants
    a_sid, b_sid = sessions
    bearer = {"Authorization": f"Bearer {bob.token}"}
    # The cap (3) holds for both web nodes together: two on one, one on the other.
    held = [Viewer(st.url, b_sid, token=bob.token), Viewer(st.url, b_sid, token=bob.token),
            Viewer(url2, b_sid, token=bob.token)]
    for url in (url2, st.url):
        frames, code = _refused(ws_url(url, b_sid), bearer)
        assert code == 4429, (frames, code)
        assert [f["code"] for f in frames] == ["too_many_connections"]
        assert "3 WebSockets open" in frames[0]["message"]
    # The Python client says why (vterm/stream.py).
    from vterm.errors import RateLimited
    from vterm.stream import Terminal

    with pytest.raises(RateLimited, match="3 WebSockets open"):
        Terminal(ws_url(url2, b_sid), bob.token, reconnect=False).connect()
    # alice has places of her own, on the same backend and web nodes.
    alices = [Viewer(u, a_sid, token=alice.token) for u in (st.url, url2, st.url)]
    _alice_is_fine(alice, a_sid, alices[0])
    # bob's refused attempts took no place; closing one frees one, on either node.
    held.pop(0).close()
    deadline = time.monotonic() + 30
    while True:
        try:
            held.append(Viewer(url2, b_sid, token=bob.token))
            break
        except (ConnectionClosed, TimeoutError):  # the close is released a moment after the client's
            assert time.monotonic() < deadline, "a closed WebSocket's place never came free"
            time.sleep(0.2)
    assert held[-1].hello["type"] == "hello"
    for v in held + alices:
        v.close()


# -- item 5: Origin on scheme, host and port ---------------------------------------------------------

def _login(url: str, username: str, password: str) -> httpx.Client:
    web = httpx.Client(base_url=url, timeout=30, headers={"Referer": url + "/"})
    page = web.get("/api-auth/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    web.post("/api-auth/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token})
    assert "sessionid" in web.cookies, f"{username} could not log in"
    return web


def _set_password(st, username: str, password: str) -> None:
    st.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g\n"
                     f"u,_=g().objects.get_or_create(username={username!r}); u.set_password({password!r}); u.save()")


def test_a_websocket_origin_must_match_scheme_host_and_port(tenants, alice, sessions):
    st, _ = tenants
    _set_password(st, "olga", "olga-pass-123")
    web = _login(st.url, "olga", "olga-pass-123")
    sid = web.post("/api/v1/sessions/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"]}).json()["id"]
    cookie = {"Cookie": f"sessionid={web.cookies['sessionid']}"}
    port = st.url.rsplit(":", 1)[1]
    for origin in ("http://127.0.0.1:1", "http://localhost:9999", f"http://127.0.0.1:{int(port) + 1}",
                   f"https://127.0.0.1:{port}", "http://127.0.0.1", "http://evil.example", "null"):
        with pytest.raises(InvalidStatus) as exc:
            connect(ws_url(st.url, sid), additional_headers={**cookie, "Origin": origin}, open_timeout=30)
        assert exc.value.response.status_code == 403, origin
        # REST refuses the same Origin for a cookie request that changes something (Django's CSRF check).
        r = web.post(f"/api/v1/sessions/{sid}/input/", json={"data": "x"},
                     headers={"X-CSRFToken": web.cookies["csrftoken"], "Origin": origin})
        assert r.status_code == 403, (origin, r.text)
    # The site's own origin works, for the page and for REST.
    v = Viewer(st.url, sid, headers={**cookie, "Origin": st.url})
    v.send(type="run", command="echo same-origin", ref="o")
    assert v.command_end("o")["command"]["output"] == "same-origin\n"
    v.close()
    assert web.post(f"/api/v1/sessions/{sid}/input/", json={"data": "x"},
                    headers={"X-CSRFToken": web.cookies["csrftoken"], "Origin": st.url}).status_code == 202
    # A program (no Origin) with a Bearer header is not a browser: it passes.
    Viewer(st.url, sessions[0], token=alice.token).close()
    web.delete(f"/api/v1/sessions/{sid}/", headers={"X-CSRFToken": web.cookies["csrftoken"]})


# -- item 6: revocation reaches open WebSockets ------------------------------------------------------

def _closed_with(v: Viewer, timeout: float = 60) -> tuple[int, list[dict]]:
    deadline = time.monotonic() + timeout
    start = len(v.frames)
    while True:
        try:
            v.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return (exc.rcvd.code if exc.rcvd else -1), v.frames[start:]
        except TimeoutError:
            raise AssertionError(f"still open after {timeout} s") from None


def test_a_deleted_token_closes_the_websockets_it_opened(tenants, alice, sessions):
    st, _ = tenants
    a_sid, _ = sessions
    tok = st.token("tina")
    tina = Api(st.url, tok)
    sid = tina.create_session()["id"]
    v = Viewer(st.url, sid, token=tok)
    av = Viewer(st.url, a_sid, token=alice.token)
    st.config.manage("shell", "-c", "from rest_framework.authtoken.models import Token; "
                     "Token.objects.filter(user__username='tina').delete()")
    code, frames = _closed_with(v)
    assert code == 4401 and [f["code"] for f in frames if f["type"] == "error"] == ["revoked"], (code, frames)
    _alice_is_fine(alice, a_sid, av)
    av.close()


def test_a_deactivated_user_is_closed_out_of_cookie_and_token_websockets(tenants, alice, sessions):
    st, _ = tenants
    a_sid, _ = sessions
    _set_password(st, "dora", "dora-pass-123")
    tok = st.token("dora")
    web = _login(st.url, "dora", "dora-pass-123")
    sid = Api(st.url, tok).create_session()["id"]
    by_cookie = Viewer(st.url, sid, headers={"Cookie": f"sessionid={web.cookies['sessionid']}", "Origin": st.url})
    by_token = Viewer(st.url, sid, token=tok)
    av = Viewer(st.url, a_sid, token=alice.token)
    st.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                     "g().objects.filter(username='dora').update(is_active=False)")
    for v in (by_cookie, by_token):
        code, frames = _closed_with(v)
        assert code == 4401, (code, frames)
    # And she cannot come back in.
    _, code = _refused(ws_url(st.url, sid), {"Authorization": f"Bearer {tok}"})
    assert code == 4401
    _alice_is_fine(alice, a_sid, av)
    av.close()


# -- item 8: rate limits on resize, interrupt, screen, recording ------------------------------------

def _retry_after(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1
    return int(r.headers["Retry-After"])


REST_CALLS = {
    "resize": ("POST", "resize/", {"cols": 100, "rows": 30}),
    "screen": ("GET", "screen/", None),
    "recording": ("GET", "recording.cast", None),
}


@pytest.mark.parametrize("kind", sorted(REST_CALLS))
def test_rest_calls_are_rate_limited_per_user(tenants, alice, bob, sessions, kind):
    _, url2 = tenants
    a_sid, b_sid = sessions
    method, path, body = REST_CALLS[kind]
    bob2 = Api(url2, bob.token)  # the other web node: one bucket for both

    def call(api: Api, sid: str) -> httpx.Response:
        return api.http.request(method, f"/api/v1/sessions/{sid}/{path}", json=body)
    codes = [call(api, b_sid).status_code for api in (bob, bob2, bob)]
    assert all(c < 300 for c in codes), codes
    for api in (bob2, bob):
        r = call(api, b_sid)
        _retry_after(r)
        assert f"Too many {kind} requests" in r.json()["detail"]
    # alice's bucket is her own.
    assert call(alice, a_sid).status_code < 300
    _alice_is_fine(alice, a_sid)


def test_interrupt_is_rate_limited_over_rest_and_websocket(tenants, alice, sessions):
    st, url2 = tenants
    a_sid, _ = sessions
    ivan = Api(st.url, st.token("ivan"))
    sid = ivan.create_session()["id"]
    v = Viewer(url2, sid, token=ivan.token)
    for _ in range(4):  # burst 3: the fourth Ctrl-C finds the bucket empty
        v.send(type="interrupt")
    err = v.until(lambda f: f["type"] == "error", timeout=60)
    assert err["code"] == "throttled" and "Too many interrupt requests" in err["message"], err
    # REST, on the other web node, finds the same empty bucket.
    cmd = ivan.run(sid, "sleep 60", wait=0)
    _retry_after(ivan.http.post(f"/api/v1/sessions/{sid}/commands/{cmd['id']}/interrupt/"))
    # alice interrupts her own command meanwhile.
    acmd = alice.run(a_sid, "sleep 60", wait=0)
    assert alice.http.post(f"/api/v1/sessions/{a_sid}/commands/{acmd['id']}/interrupt/").status_code == 202
    assert alice.wait_command(a_sid, acmd["id"])["status"] == "interrupted"
    _alice_is_fine(alice, a_sid)
    v.close()
    ivan.http.delete(f"/api/v1/sessions/{sid}/")


def test_websocket_resize_is_rate_limited(tenants, alice, sessions):
    st, url2 = tenants
    a_sid, _ = sessions
    rita = Api(st.url, st.token("rita"))
    sid = rita.create_session()["id"]
    v = Viewer(url2, sid, token=rita.token)
    for cols in (81, 82, 83):
        v.send(type="resize", cols=cols, rows=24)
    v.send(type="resize", cols=84, rows=24)
    err = v.until(lambda f: f["type"] == "error", timeout=60)
    assert err["code"] == "throttled" and "Too many resize requests" in err["message"], err
    _retry_after(rita.http.post(f"/api/v1/sessions/{sid}/resize/", json={"cols": 90, "rows": 30}))
    v.send(type="ping")
    v.until(lambda f: f["type"] == "pong", timeout=30)  # the connection carries on
    assert alice.http.post(f"/api/v1/sessions/{a_sid}/resize/", json={"cols": 120, "rows": 40}).status_code == 200
    v.close()
    rita.http.delete(f"/api/v1/sessions/{sid}/")


# -- item 9: static paths that escape the static root; task arguments in Flower ----------------------

def test_a_static_path_that_escapes_the_root_is_a_404_without_a_traceback(tenants):
    st, _ = tenants
    log = st.log_dir / "web.log"
    before = log.stat().st_size
    host, port = st.url.removeprefix("http://").split(":")
    for path in ("/static/../metrics", "/static/../../../etc/passwd", "/static/%2e%2e/metrics",
                 "/static/admin/../../metrics"):
        conn = http.client.HTTPConnection(host, int(port), timeout=30)  # sends the path as it is
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 404, (path, r.status)
        assert b"# HELP" not in body and b"root:" not in body
    with open(log, "rb") as f:
        f.seek(before)
        assert b"Traceback" not in f.read()


def test_session_start_arguments_are_masked_where_flower_reads_them(tenants, alice):
    """Flower shows what the workers' task events carry; a session's environment values are not in them."""
    from celery import Celery

    st, _ = tenants
    app = Celery("observer", broker=st.config.redis_url,
                 broker_transport_options={"global_keyprefix": st.redis_prefix})
    seen: list[dict] = []
    ready = threading.Event()
    with app.connection_for_read() as conn:
        # Any event (the workers' heartbeats, every 2 s) shows the receiver is subscribed.
        recv = app.events.Receiver(conn, handlers={"task-received": seen.append, "*": lambda e: ready.set()})
        t = threading.Thread(target=lambda: recv.capture(limit=None, timeout=None, wakeup=True), daemon=True)
        t.start()
        assert ready.wait(30), "no task events from the workers"
        sid = alice.create_session(env={"APP_SECRET_TOKEN": "hunter2-tok"})["id"]
        deadline = time.monotonic() + 30
        while not any(e.get("name") == "workers.tasks.session_start" for e in seen):
            assert time.monotonic() < deadline, "no task-received event for session_start"
            time.sleep(0.1)
        recv.should_stop = True
        t.join(10)
    start = next(e for e in seen if e.get("name") == "workers.tasks.session_start")
    assert "APP_SECRET_TOKEN" in start["args"] and "***" in start["args"], start["args"]
    assert "hunter2-tok" not in json.dumps(seen)
    # The shell itself got the value.
    assert alice.run(sid, "echo $APP_SECRET_TOKEN")["output"] == "hunter2-tok\n"
    alice.http.delete(f"/api/v1/sessions/{sid}/")
