"""The Python client (vterm.client) against the live stack: REST, WebSocket, errors, sync and asyncio."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import vterm.client as client_module
from vterm.client import (
    AsyncClient,
    AuthError,
    BadRequest,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
)
from vterm_project.devstack import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vt(stack, alice):
    with Client(stack.url, alice.token) as c:
        yield c


@pytest.fixture
def sess(vt):
    s = vt.create_session(name="client-test")
    yield s
    try:
        vt.end_session(s)
    except NotFound:
        pass


def _until(predicate, timeout: float = 20.0, pause: float = 0.1):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > end:
            return value
        time.sleep(pause)


def test_session_lifecycle_and_run(vt):
    s = vt.create_session(name="lifecycle", cwd="/tmp", env={"GREETING": "hi there"}, cols=100, rows=30)
    assert (s.name, s.status, s.cwd, s.env, s.cols, s.rows) == ("lifecycle", "active", "/tmp",
                                                                 {"GREETING": "hi there"}, 100, 30)
    assert s.is_live and s.backend and s.created_at is not None
    assert s.id in {x.id for x in vt.list_sessions()}
    assert vt.count_sessions() >= 1

    r = vt.run(s, 'echo "$GREETING"; cd /usr && pwd')
    assert (r.ok, r.status, r.exit_code, r.output, r.cwd) == (True, "succeeded", 0, "hi there\n/usr\n", "/usr")
    assert r.done and r.seq == 1 and r.session == s.id and r.duration_ms is not None
    failed = vt.run(s.id, "ls /does-not-exist")
    assert (failed.ok, failed.status, failed.exit_code) == (False, "failed", 2), "no exception for exit != 0"
    assert "does-not-exist" in failed.output

    assert [c.command for c in vt.history(s)] == ['echo "$GREETING"; cd /usr && pwd', "ls /does-not-exist"]
    assert vt.get_command(s, r.id).output == "hi there\n/usr\n"
    assert vt.get_session(s).command_count == 2

    vt.end_session(s)
    assert _until(lambda: vt.get_session(s).status == "terminated")
    with pytest.raises(Conflict) as exc:
        vt.run(s, "true")
    assert exc.value.status == 409 and "terminated" in exc.value.message


def test_run_outlasting_the_server_wait_polls_until_done(vt, sess, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_SERVER_WAIT", 0.3)
    r = vt.run(sess, "sleep 1.5; echo slow-done")
    assert (r.status, r.output) == ("succeeded", "slow-done\n")
    pending = vt.run(sess, "sleep 3; echo later", wait=0.5)
    assert not pending.done and pending.status in ("queued", "running")
    assert vt.wait_command(sess, pending).output == "later\n"


def test_timeout_and_interrupt(vt, sess):
    r = vt.run(sess, "sleep 20", timeout=0.5)
    assert (r.status, r.ok, r.done) == ("timed_out", False, True)
    r = vt.run(sess, "echo begun; sleep 20", idle_timeout=1)
    assert (r.status, r.reason) == ("timed_out", "no output for 1 s") and r.output.startswith("begun\n"), r
    cmd = vt.submit(sess, "sleep 30")
    assert _until(lambda: vt.get_command(sess, cmd).status == "running")
    vt.interrupt(sess, cmd)
    ended = vt.wait_command(sess, cmd, wait=20)
    assert ended.status == "interrupted"
    with pytest.raises(Conflict):
        vt.interrupt(sess, cmd)
    assert vt.run(sess, "echo still-here").output == "still-here\n"


def test_input_keys_screen_resize(vt, sess):
    vt.send_input(sess, "echo typed-$((2+3))\r")
    assert _until(lambda: "typed-5" in vt.screen(sess).text), "the echo of the typed line says $((2+3))"
    vt.send_input(sess, "sleep 30\r")
    time.sleep(0.3)
    vt.send_keys(sess, ["C-c"])
    vt.send_input(sess, "echo after-ctrl-c\r")
    assert _until(lambda: "\nafter-ctrl-c" in vt.screen(sess).text)
    resized = vt.resize(sess, 90, 20)
    assert (resized.cols, resized.rows) == (90, 20)
    assert _until(lambda: (vt.screen(sess).cols, vt.screen(sess).rows) == (90, 20))
    raw = vt.raw_output(sess, vt.run(sess, "printf 'a\\033[1mb'"))
    assert raw.endswith(b"a\x1b[1mb") or b"a\x1b[1mb" in raw


def test_errors_carry_the_servers_message(stack, vt, sess, bob):
    with pytest.raises(BadRequest) as exc:
        vt.create_session(cwd="relative/path")
    assert exc.value.status == 400 and "cwd" in exc.value.errors and "absolute" in exc.value.errors["cwd"][0]
    with pytest.raises(BadRequest) as exc:
        vt.submit(sess, "")
    assert "command" in exc.value.errors
    with Client(stack.url, bob.token) as as_bob, pytest.raises(NotFound) as exc:
        as_bob.get_session(sess)
    assert exc.value.status == 404
    with pytest.raises(NotFound):
        vt.get_session("00000000-0000-0000-0000-000000000000")
    with Client(stack.url, "not-a-token") as bad, pytest.raises(AuthError) as exc:
        bad.list_sessions()
    assert exc.value.status == 401 and exc.value.message
    with Client(f"http://127.0.0.1:{free_port()}", "x") as nowhere, pytest.raises(ConnectionFailed) as exc:
        nowhere.list_sessions()
    assert "cannot reach" in str(exc.value)


def test_websocket_terminal_run_output_and_resume(vt, sess):
    with vt.terminal(sess) as term:
        assert term.hello is not None and term.hello.session.id == sess.id
        term.run("echo ws-$((6*7))", ref="r1")
        seen, final = [], None
        # The command's end and its terminal output travel separately: wait for both.
        while final is None or "ws-42\r\n" not in "".join(f.data for f in seen):
            frame = term.recv(timeout=20)
            assert frame is not None, "no frame within 20 s"
            if frame.type == "output":
                seen.append(frame)
            elif frame.type == "command" and frame.command.done:
                final = frame
        assert final.ref == "r1" and final.command.output == "ws-42\n" and final.command.ok
        seqs = [f.seq for f in seen]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "output seqs rise by one, no gaps"
        last = term.last_seq

    # Output made while nobody watches is replayed after ?since=, then live output follows.
    vt.run(sess, "echo while-away")
    with vt.terminal(sess, since=last) as term:
        text, seqs = "", []
        while "while-away\r\n" not in text:
            frame = term.recv(timeout=20)
            assert frame is not None
            if frame.type == "output":
                text += frame.data
                seqs.append(frame.seq)
        assert seqs[0] == last + 1 and seqs == list(range(last + 1, last + 1 + len(seqs)))


def test_websocket_reconnects_after_a_dropped_connection_without_gap(vt, sess):
    with vt.terminal(sess) as term:
        # As a terminal does: the screen first. A command that ended before the server took it
        # would show in that snapshot, not as output frames (docs/websocket.md).
        while (f := term.recv(timeout=20)) is not None and f.type != "snapshot":
            pass
        assert f is not None, "no snapshot after connecting"
        vt.run(sess, "echo before-drop")
        text = ""
        while "before-drop\r\n" not in text:
            f = term.recv(timeout=20)
            assert f is not None
            text += f.data if f.type == "output" else ""
        before = term.last_seq
        term._ws.socket.shutdown(socket.SHUT_RDWR)  # the network goes away under the client
        vt.run(sess, "echo after-drop")
        reconnects = []
        term.on_reconnect = reconnects.append
        seqs, text = [], ""
        while "after-drop\r\n" not in text:
            f = term.recv(timeout=30)
            assert f is not None
            if f.type == "output":
                seqs.append(f.seq)
                text += f.data
        assert reconnects, "the client reconnected"
        assert seqs[0] == before + 1 and seqs == list(range(before + 1, before + 1 + len(seqs)))


def test_websocket_flow_control_large_output_is_all_delivered(vt, sess):
    """~1.3 MB of output: more than the server's window, so it only all arrives if the client acks."""
    with vt.terminal(sess) as term:
        term.run("seq 1 200000; echo END-OF-SEQ", ref="big")
        text, ended = "", False
        while not ended or "END-OF-SEQ\r\n" not in text[-200:]:
            f = term.recv(timeout=30)
            assert f is not None, "output stalled: no frame in 30 s"
            if f.type == "output":
                text += f.data
            elif f.type == "snapshot":
                text += "\r\n".join(f.lines or []) + "\r\n"
            elif f.type == "command" and f.ref == "big" and f.command.done:
                ended = True
        assert "199999\r\n200000\r\n" in text


def test_websocket_errors(stack, vt, sess, bob):
    with Client(stack.url, bob.token) as as_bob, pytest.raises(NotFound):
        as_bob.terminal(sess)
    with Client(stack.url, "not-a-token") as bad, pytest.raises(AuthError):
        bad.terminal(sess)


def test_stream_output_iterator(vt, sess):
    def later():
        time.sleep(0.5)
        vt.run(sess, "echo streamed-$((1+1))")
    threading.Thread(target=later, daemon=True).start()
    text = ""
    for chunk in vt.stream_output(sess):
        text += chunk
        if "streamed-2\r\n" in text:
            break
    assert "streamed-2" in text


def test_async_client(stack, alice):
    async def scenario():
        async with AsyncClient(stack.url, alice.token) as avt:
            s = await avt.create_session(name="async", env={"X": "1"})
            try:
                r = await avt.run(s, "echo $X; false")
                assert (r.output, r.exit_code, r.ok) == ("1\n", 1, False)
                assert [c.seq for c in await avt.history(s)] == [1]
                assert s.id in {x.id for x in await avt.list_sessions()}
                await avt.send_input(s, "echo async-typed\r")
                term = await avt.terminal(s)
                async with term:
                    await term.run("echo async-ws", ref="a")
                    async for frame in term:
                        if frame.type == "command" and frame.ref == "a" and frame.command.done:
                            assert frame.command.output == "async-ws\n"
                            break
                screen = await avt.screen(s)
                assert "async-typed" in screen.text
                with pytest.raises(NotFound):
                    await avt.get_session("00000000-0000-0000-0000-000000000000")
            finally:
                await avt.end_session(s)
    asyncio.run(scenario())
