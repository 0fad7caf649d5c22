"""The WebSocket terminal (API.md) with a real client against the live stack: Daphne, Celery
backend workers, Redis, tmux. Frame seqs are checked on every frame (tests/ws_viewer.py)."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from sessions.broadcast import viewers_key
from tests.conftest import Api, make_stack
from tests.ws_viewer import Viewer, ws_url
from vterm_project.redis_config import client_for_url

pytestmark = pytest.mark.integration


def numbers_in(text: str) -> list[int]:
    """The lines of `seq` output in a terminal's bytes (CR LF lines that are only digits)."""
    text = re.sub(r"\x1b\][^\x07]*\x07", "", text)  # the shell's marks (OSC 133) share the first line
    return [int(x) for x in re.findall(r"(?m)(?:^|\r)(\d+)\r?$", text)]


def close_code(url: str, **kwargs) -> int:
    with connect(url, open_timeout=30, **kwargs) as ws:
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=30)
        return ws.close_code


def test_hello_then_run_answered_by_command_frames_with_ref(stack, alice, session):
    v = Viewer(stack.url, session["id"], token=alice.token)
    assert v.hello["type"] == "hello" and v.hello["session"]["id"] == session["id"]
    assert isinstance(v.hello["seq"], int)
    v.send(type="run", command="echo hi-$((6*7))", ref="r1")
    queued = v.until(lambda f: f["type"] == "command")
    assert queued["ref"] == "r1" and queued["command"]["command"] == "echo hi-$((6*7))"
    end = v.command_end("r1")
    assert (end["command"]["status"], end["command"]["exit_code"], end["command"]["output"]) == ("succeeded", 0, "hi-42\n")
    assert end["command"]["id"] == queued["command"]["id"]
    v.until_output("hi-42")
    assert v.breaks == []
    # Typed keystrokes, and a ping.
    v.send(type="input", data="echo typed-$((1+1))\r")
    v.until_output("typed-2")
    v.send(type="ping")
    v.until(lambda f: f["type"] == "pong")
    assert v.breaks == []
    v.close()


def test_each_run_ends_once_for_its_client_and_once_for_other_viewers(stack, alice, session):
    """The runner gets its command's end from the reply list, other viewers from the channel layer;
    neither sees it twice, nor a `running` frame after it."""
    runner, watcher = (Viewer(stack.url, session["id"], token=alice.token) for _ in range(2))
    ids = []
    for i, command in enumerate(["true", "sleep 0.2; echo slow", "echo fast"]):
        runner.send(type="run", command=command, ref=f"x{i}")
        ids.append(runner.command_end(f"x{i}")["command"]["id"])
    runner.send(type="ping")  # anything still coming for those commands arrives before the pong
    runner.until(lambda f: f["type"] == "pong")
    watcher.until(lambda f: f["type"] == "command" and f["command"]["id"] == ids[-1]
                  and f["command"]["status"] == "succeeded")
    time.sleep(0.5)  # late copies, if any, would come now
    runner.send(type="ping")
    runner.until(lambda f: f["type"] == "pong")
    for v in (runner, watcher):
        for cid in ids:
            states = [f["command"]["status"] for f in v.frames if f["type"] == "command" and f["command"]["id"] == cid]
            assert states.count("succeeded") == 1, states
            assert "running" not in states[states.index("succeeded"):], states
    runner.close()
    watcher.close()


def test_interrupt_ends_the_running_command(stack, alice, session):
    v = Viewer(stack.url, session["id"], token=alice.token)
    v.send(type="run", command="sleep 60", ref="long")
    v.until(lambda f: f["type"] == "command" and f["command"]["status"] == "running")
    v.send(type="interrupt")
    assert v.command_end("long")["command"]["status"] == "interrupted"
    v.send(type="run", command="echo after", ref="next")
    assert v.command_end("next")["command"]["output"] == "after\n"
    v.close()


def test_resume_after_a_disconnect_mid_output_loses_and_repeats_nothing(stack, alice, session):
    n = 150_000
    a = Viewer(stack.url, session["id"], token=alice.token)
    a.send(type="run", command=f"seq 1 {n}", ref="seq")
    # Leave in the middle of the output, without a goodbye.
    while len(a.output()) < 200_000:
        a.until(lambda f: f["type"] == "output")
    last = a.position
    a.ws.socket.close()
    got_before = a.output()
    assert numbers_in(got_before)[-1] < n, "the disconnect should come mid-output"

    b = Viewer(stack.url, session["id"], token=alice.token, since=last)
    first = b.until(lambda f: f["type"] in ("output", "snapshot"))
    assert first == {"type": "output", "seq": last + 1, "data": first["data"]}, "replayed, not a snapshot"
    b.until_output("\x1b]133;D;0;")  # the command's end mark
    whole = got_before + b.output()
    assert numbers_in(whole) == list(range(1, n + 1))
    assert a.breaks == [] and b.breaks == []
    b.close()


def test_two_viewers_see_the_same_output(stack, alice, session):
    one = Viewer(stack.url, session["id"], token=alice.token)
    two = Viewer(stack.url, session["id"], token=alice.token)
    one.send(type="run", command="for i in $(seq 1 300); do echo line-$i; done", ref="loop")
    end = one.command_end("loop")
    assert end["command"]["status"] == "succeeded"
    ended = two.until(lambda f: f["type"] == "command" and f["command"]["id"] == end["command"]["id"]
                      and f["command"]["status"] == "succeeded")
    assert "ref" not in ended, "a ref goes only to the viewer that ran the command"
    for v in (one, two):
        v.until_output("\x1b]133;D;0;")
        assert re.findall(r"line-(\d+)", v.output()) == [str(i) for i in range(1, 301)]
        assert v.breaks == []
    common = set(dict(one.outputs)) & set(dict(two.outputs))
    assert common and all(dict(one.outputs)[s] == dict(two.outputs)[s] for s in common)
    one.close()
    two.close()


def test_backend_sends_to_a_session_group_only_while_someone_watches(stack, alice, session, redis_url):
    """The backend skips the channel layer for a session whose group key is absent (sessions/broadcast.py):
    the key must be the one channels-redis keeps the group under, and a viewer who joins a busy
    session must still get every frame after its hello, from the stream or live."""
    r = client_for_url(redis_url)
    key = viewers_key(session["id"])
    assert not r.exists(key)
    # Output flows while nobody watches, and goes on while a viewer joins.
    alice.run(session["id"], "(for i in $(seq 1 400); do echo tick-$i; sleep 0.005; done) &", wait=10)
    v = Viewer(stack.url, session["id"], token=alice.token)
    assert r.exists(key)
    v.until_output("tick-400")
    assert v.breaks == []
    seen = [int(x) for x in re.findall(r"tick-(\d+)", v.output())]
    assert seen == list(range(seen[0], 401)), "a frame went missing after the viewer joined"
    v.close()
    deadline = time.monotonic() + 30
    while r.exists(key) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not r.exists(key), "the group outlived its last viewer"


def test_a_viewer_who_joins_a_watched_session_mid_output_misses_nothing(stack, alice, session):
    """The backend sends to the viewers it knew in the pipeline that writes the stream, and to the ones
    the same pipeline found joined since right after (sessions/broadcast.ViewerSender): a second viewer
    joining a watched, busy session gets every frame after its hello, and the first one all of them."""
    one = Viewer(stack.url, session["id"], token=alice.token)
    alice.run(session["id"], "(for i in $(seq 1 400); do echo tock-$i; sleep 0.005; done) &", wait=10)
    one.until_output("tock-50")
    two = Viewer(stack.url, session["id"], token=alice.token)
    for v in (one, two):
        v.until_output("tock-400")
        assert v.breaks == []
    seen = [int(x) for x in re.findall(r"tock-(\d+)", two.output())]
    assert seen and seen[0] <= 400 and seen == list(range(seen[0], 401)), "a frame went missing after the join"
    assert [int(x) for x in re.findall(r"tock-(\d+)", one.output())] == list(range(1, 401))
    # A last frame with nothing after it: no later frame would show a viewer it missed it.
    alice.run(session["id"], "(sleep 1; echo burst-$((3*3))) &", wait=10)
    three = Viewer(stack.url, session["id"], token=alice.token)
    for v in (one, two, three):
        v.until_output("burst-9")
        assert v.breaks == []
    one.close()
    two.close()
    three.close()


# Flow control with a small window, so that a few hundred kB of output exercise it.
FLOW_ENV = {"VTERM_WS_WINDOW_HIGH": 64 * 1024, "VTERM_WS_WINDOW_LOW": 16 * 1024, "VTERM_WS_SKIP_AFTER": 256 * 1024}


@pytest.fixture(scope="module")
def flow_stack(redis_url, tmp_path_factory):
    st = make_stack(redis_url, tmp_path_factory.mktemp("wsflow"), backends=1, prefix="wsf",
                    VTERM_REDIS_PREFIX=f"wsf{uuid.uuid4().hex[:6]}:", **FLOW_ENV)
    try:
        st.start()
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def flow_user(flow_stack) -> Api:
    return Api(flow_stack.url, flow_stack.token("flo"))


def test_slow_reader_is_held_at_the_window_then_skips_to_a_snapshot(flow_stack, flow_user):
    """A viewer that does not acknowledge gets no more than the window; the session, a fast viewer
    and other sessions carry on; when it acknowledges again it jumps ahead with a snapshot."""
    api = flow_user
    s = api.create_session(name="flood")
    slow = Viewer(flow_stack.url, s["id"], token=api.token, ack=False)
    fast = Viewer(flow_stack.url, s["id"], token=api.token)
    high = slow.hello["flow"]["high"]
    assert high == FLOW_ENV["VTERM_WS_WINDOW_HIGH"]
    fast.send(type="run", command="yes flood | head -c 1500000; echo flood-$((1+1))-done", ref="flood")
    assert fast.command_end("flood", 300)["command"]["status"] == "succeeded"
    fast.until_output("flood-2-done")
    # Meanwhile another session answers as usual.
    other = api.create_session(name="bystander")
    assert api.run(other["id"], "echo unaffected")["output"] == "unaffected\n"

    # The slow viewer got at most the window (plus one frame) of output, though 1.5 MB were written.
    got = 0
    while True:
        try:
            frame = slow.recv(timeout=3)
        except TimeoutError:
            break
        if frame["type"] == "output":
            got += len(frame["data"])
    assert 0 < got <= high + 64 * 1024, got
    # It acknowledges: what was held back is too much to replay, so the screen comes instead.
    slow.ack = True
    slow.send(type="ack", seq=slow.position)
    snap = slow.until(lambda f: f["type"] == "snapshot")
    assert snap["seq"] > slow.outputs[-1][0] and isinstance(snap["lines"], list)
    assert any("flood-2-done" in line for line in snap["lines"]), snap["lines"]
    slow.send(type="run", command="echo slow-is-$((1+1))-live", ref="live")
    slow.command_end("live")
    slow.until_output("slow-is-2-live")
    assert slow.breaks == [] and fast.breaks == []
    for v in (slow, fast):
        v.close()
    api.http.delete(f"/api/v1/sessions/{s['id']}/")
    api.http.delete(f"/api/v1/sessions/{other['id']}/")


def test_yes_then_interrupt_stays_responsive(flow_stack, flow_user):
    api = flow_user
    s = api.create_session(name="yes")
    v = Viewer(flow_stack.url, s["id"], token=api.token)
    v.send(type="input", data="yes\r")
    while len(v.output()) < 300_000:
        v.until(lambda f: f["type"] == "output")
    v.send(type="interrupt")
    # Typed after Ctrl-C; it shows either live or, for a viewer that fell behind, in a snapshot.
    v.send(type="input", data="echo after-$((2*3))-yes\r")
    v.until(lambda f: (f["type"] == "output" and "after-6-yes" in f["data"])
            or (f["type"] == "snapshot" and any("after-6-yes" in line for line in f["lines"])), 120)
    assert v.breaks == []
    v.close()
    api.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_bad_frames_get_errors_and_the_session_carries_on(stack, alice, session):
    v = Viewer(stack.url, session["id"], token=alice.token)
    watcher = Viewer(stack.url, session["id"], token=alice.token)

    def error_for(raw: str | bytes) -> dict:
        v.ws.send(raw)
        return v.until(lambda f: f["type"] == "error")

    assert error_for("not json{")["code"] == "bad_json"
    assert error_for(b"\x00\x01")["code"] == "bad_frame"
    assert error_for("[1, 2]")["code"] == "bad_frame"
    assert error_for(json.dumps({"type": "launch"}))["code"] == "unknown_type"
    cases = {
        json.dumps({"type": "input", "data": 5}): "data",
        json.dumps({"type": "input", "data": "a\x00b"}): "data",
        json.dumps({"type": "resize", "cols": "wide", "rows": 30}): "cols",
        json.dumps({"type": "resize", "cols": 80, "rows": 100000}): "rows",
        json.dumps({"type": "run"}): "command",
        json.dumps({"type": "run", "command": "echo x", "ref": 7}): "ref",
        json.dumps({"type": "run", "command": "echo x", "timeout": "soon"}): "timeout",
        json.dumps({"type": "ack", "seq": "12"}): "seq",
        json.dumps({"type": "ack", "seq": -1}): "seq",
        json.dumps({"type": "ack", "seq": True}): "seq",  # not the int fast path: the serializer's error
        json.dumps({"type": "ack"}): "seq",
        json.dumps({"type": "ack", "seq": 2**64}): "seq",
        json.dumps({"type": "input", "keys": ["NotAKey"]}): "keys",
    }
    for raw, field in cases.items():
        err = error_for(raw)
        assert err["code"] == "invalid" and field in err["message"], (raw, err)
    # Still a working terminal on the same connection.
    v.send(type="run", command="echo still-here", ref="ok")
    assert v.command_end("ok")["command"]["output"] == "still-here\n"

    # A frame over the limit (Daphne's 1 MiB) closes this connection with 1009, and only this one.
    # (The client may see the connection torn down while it is still sending the frame, the send
    # itself then raising: 1006.)
    with pytest.raises(ConnectionClosed):
        v.ws.send(json.dumps({"type": "input", "data": "x" * (2 * 1024 * 1024)}))
        while True:
            v.recv(timeout=30)
    assert v.ws.close_code in (1009, 1006)
    watcher.send(type="run", command="echo watcher-fine", ref="w")
    assert watcher.command_end("w")["command"]["output"] == "watcher-fine\n"
    assert alice.run(session["id"], "echo rest-fine")["output"] == "rest-fine\n"
    watcher.close()


def test_auth_close_codes(stack, alice, bob, session):
    url = ws_url(stack.url, session["id"])
    assert close_code(url) == 4401
    assert close_code(url, additional_headers={"Authorization": "Bearer not-a-token"}) == 4401
    assert close_code(url + f"?token={alice.token}") == 4401, "a token in the URL is not accepted"
    assert close_code(url, additional_headers={"Authorization": f"Bearer {bob.token}"}) == 4404
    missing = ws_url(stack.url, "00000000-0000-0000-0000-000000000000")
    assert close_code(missing, additional_headers={"Authorization": f"Bearer {alice.token}"}) == 4404
    assert close_code(ws_url(stack.url, "not-a-uuid"), additional_headers={"Authorization": f"Bearer {alice.token}"}) == 4404
    # A page on another site cannot ride on the cookie.
    with pytest.raises(InvalidStatus):
        connect(url, additional_headers={"Authorization": f"Bearer {alice.token}",
                                         "Origin": "https://evil.example"}, open_timeout=30)


def test_session_cookie_authenticates(stack, alice, session):
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                                       "u=g().objects.get(username='alice'); u.set_password('alice-pw-123'); u.save()")
    with httpx.Client(base_url=stack.url, timeout=30) as web:
        web.get("/login/")
        r = web.post("/login/", data={"username": "alice", "password": "alice-pw-123",
                                      "csrfmiddlewaretoken": web.cookies["csrftoken"]},
                     headers={"Referer": stack.url + "/login/"})
        assert r.status_code == 302, r.text
        cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    v = Viewer(stack.url, session["id"], headers={"Cookie": cookie, "Origin": stack.url})
    assert v.hello["session"]["owner"] == "alice"
    v.close()


def test_since_beyond_what_is_kept_gives_a_snapshot(stack, alice, session):
    v = Viewer(stack.url, session["id"], token=alice.token, since=10**12)
    frame = v.until(lambda f: f["type"] in ("output", "snapshot"))
    assert frame["type"] == "snapshot" and frame["seq"] <= v.hello["seq"] + 1
    v.close()
