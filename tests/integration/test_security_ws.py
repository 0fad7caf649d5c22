"""The WebSocket terminal's security: who may attach, the Origin check, the audit of attaches,
and a fuzz of malformed frames that must bounce off (an error frame; the session carries on).
"""

from __future__ import annotations

import json
import random
import re
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.ws_viewer import Viewer, ws_url

pytestmark = pytest.mark.integration


def _close_code(url: str, headers: dict | None = None) -> int:
    """The close code the server ends the connection with, before sending anything else."""
    with connect(url, additional_headers=headers or {}, open_timeout=30) as ws:
        try:
            frame = ws.recv(timeout=30)
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1
        raise AssertionError(f"expected a close, got a frame: {frame[:200]}")


def test_only_the_owner_or_staff_attach(stack, alice, bob, capsys):
    s = alice.create_session(name="ws-private")
    sid = s["id"]
    url = ws_url(stack.url, sid)
    attempts = {
        "another user's token": (url, {"Authorization": f"Bearer {bob.token}"}, 4404),
        "a missing session": (ws_url(stack.url, str(uuid.uuid4())), {"Authorization": f"Bearer {bob.token}"}, 4404),
        "not a session id": (ws_url(stack.url, "..%2F..%2Fadmin"), {"Authorization": f"Bearer {bob.token}"}, 4404),
        "no credentials": (url, {}, 4401),
        "a bad token": (url, {"Authorization": "Bearer not-a-token"}, 4401),
        "a malformed header": (url, {"Authorization": "Bearer"}, 4401),
        "another scheme": (url, {"Authorization": f"Token {alice.token}"}, 4401),
        "the owner's token in the URL": (url + f"?token={stack.token('ws-url-token')}", {}, 4401),
    }
    denied = 0
    for what, (u, headers, expected) in attempts.items():
        assert _close_code(u, headers) == expected, what
        denied += 1
    # Nothing reached the session: no attach of bob's in the audit trail, and its owner attaches.
    v = Viewer(stack.url, sid, token=alice.token)
    assert v.hello["type"] == "hello" and v.hello["session"]["id"] == sid
    v.close()
    ops = stack.token("ws-staff", staff=True)
    v = Viewer(stack.url, sid, token=ops)
    assert v.hello["session"]["owner"] == "alice"
    v.close()
    out = stack.config.manage("vterm_audit_export", "--session", sid, "--action", "session.attach").stdout
    attaches = [json.loads(line) for line in out.splitlines()]
    assert [a["user"] for a in attaches] == ["alice", "ws-staff"]
    assert all(a["detail"]["via"] == "websocket" and a["remote_addr"] == "127.0.0.1" for a in attaches)
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    with capsys.disabled():
        print(f"\n[security] WebSocket cross-user/unauthenticated attempts: {len(attempts)}, denied: {denied}")


def test_a_cross_site_origin_is_refused(stack, alice):
    """A page on another site cannot ride on the browser's session cookie."""
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                        "u,_=g().objects.get_or_create(username='wsdave'); u.set_password('wsdave-pass-123'); u.save()")
    web = httpx.Client(base_url=stack.url, timeout=30, headers={"Referer": stack.url + "/"})
    page = web.get("/api-auth/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    web.post("/api-auth/login/", data={"username": "wsdave", "password": "wsdave-pass-123",
                                       "csrfmiddlewaretoken": token})
    cookie = f"sessionid={web.cookies['sessionid']}"
    r = web.post("/api/v1/sessions/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"]})
    sid = r.json()["id"]
    url = ws_url(stack.url, sid)
    with pytest.raises(InvalidStatus) as exc:
        connect(url, additional_headers={"Cookie": cookie}, origin="http://evil.example", open_timeout=30)
    assert exc.value.response.status_code == 403
    for origin in ("http://127.0.0.1", "http://127.0.0.1:1"):  # the site's host on another port is another site
        with pytest.raises(InvalidStatus) as exc:
            connect(url, additional_headers={"Cookie": cookie}, origin=origin, open_timeout=30)
        assert exc.value.response.status_code == 403, origin
    v = Viewer(stack.url, sid, headers={"Cookie": cookie, "Origin": stack.url})
    assert v.hello["type"] == "hello"
    v.close()
    web.delete(f"/api/v1/sessions/{sid}/", headers={"X-CSRFToken": web.cookies["csrftoken"]})


def _malformed_frames(rng: random.Random) -> list[str | bytes]:
    frames: list[str | bytes] = [
        "", " ", "null", "true", "42", '"input"', "[]", "[1,2]", "{}", '{"type": null}', '{"type": 7}',
        '{"type": ["input"]}', '{"type": "nope"}', '{"type": "INPUT"}', '{"type": "__init__"}',
        '{"type": "receive"}', '{"type": "input"}', '{"type": "input", "data": 5}',
        '{"type": "input", "data": null}', '{"type": "input", "keys": "C-c"}', '{"type": "input", "keys": [1]}',
        '{"type": "input", "keys": ["-t"]}', '{"type": "input", "keys": ["C-c;kill-server"]}',
        '{"type": "input", "data": "x", "keys": ["a"]}', '{"type": "input", "data": "nul\\u0000"}',
        '{"type": "resize"}', '{"type": "resize", "cols": "x", "rows": 10}', '{"type": "resize", "cols": -1, "rows": 5}',
        '{"type": "resize", "cols": 1e308, "rows": 5}', '{"type": "resize", "cols": 100000, "rows": 5}',
        '{"type": "run"}', '{"type": "run", "command": null}', '{"type": "run", "command": ""}',
        '{"type": "run", "command": 12}', '{"type": "run", "command": "echo \\u0003"}',
        '{"type": "run", "command": "true", "timeout": "x"}', '{"type": "run", "command": "true", "timeout": -1}',
        '{"type": "run", "command": "true", "ref": {"a": 1}}', '{"type": "ack"}', '{"type": "ack", "seq": -1}',
        '{"type": "ack", "seq": "x"}', '{"type": "ack", "seq": 1.5}', '{"type": "ping", "x": ' + "[" * 50 + "]" * 50 + "}",
        "[" * 100_000 + "]" * 100_000, '{"type": "input", "data": "\\ud800"}', "{'type': 'ping'}", "\x00\x01\x02",
        '{"type": "run", "command": "true"' + ', "x": 1' * 1000 + "}",
        b"\x00\x01binary", b"",
    ]
    alphabet = '{}[]":,0123456789truefalsnl\\ \x00\x1b\u2028é' + "typeinputrunresizeackping"
    for _ in range(150):
        frames.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))))
    for _ in range(50):
        frames.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))))
    return frames


def test_malformed_frames_bounce_off(stack, alice, capsys):
    s = alice.create_session(name="ws-fuzz")
    sid = s["id"]
    rng = random.Random(6)
    frames = _malformed_frames(rng)
    v = Viewer(stack.url, sid, token=alice.token)
    errors = pongs = 0
    for frame in frames:
        v.ws.send(frame)
        # Each malformed frame gets an error frame (or a pong, for a ping with extra fields); never a close.
        got = v.until(lambda f: f["type"] in ("error", "pong", "command"), timeout=60)
        if got["type"] == "command":  # a random frame that happened to be a valid run: let it be
            continue
        errors += got["type"] == "error"
        pongs += got["type"] == "pong"
        if got["type"] == "error":
            assert set(got) == {"type", "code", "message"} and got["message"], got
            assert "Traceback" not in got["message"]
    # The connection and the session carry on.
    v.send(type="ping")
    v.until(lambda f: f["type"] == "pong", timeout=30)
    v.send(type="run", command="echo fuzz-survived", ref="last")
    end = v.command_end("last", timeout=60)
    assert end["command"]["status"] == "succeeded" and end["command"]["output"] == "fuzz-survived\n"
    # A frame over the limit closes with 1009; the session is unharmed. (The send itself may raise:
    # the server can tear the connection down while the client is still sending the frame.)
    with pytest.raises(ConnectionClosed) as exc:
        v.ws.send(json.dumps({"type": "input", "data": "x" * (2 * 1024 * 1024)}))
        while True:
            v.ws.recv(timeout=30)
    # Daphne closes with 1009 and drops the TCP connection at once; a client still sending may see
    # the drop (1006) before the close frame. Either way this connection is over and nothing crashed.
    assert v.ws.close_code in (1009, 1006), exc.value
    assert alice.run(sid, "echo after-close")["output"] == "after-close\n"
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    with capsys.disabled():
        print(f"\n[security] WebSocket fuzz: {len(frames)} malformed frames, {errors} error frames, {pongs} pongs, "
              f"0 closes, session carried on; oversized frame closed with {v.ws.close_code}")
