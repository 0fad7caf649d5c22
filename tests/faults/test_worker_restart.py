"""A backend worker restarts (kill -9) with its tmux server alive: it adopts its shells.

Heartbeat TTL is long here, so the restart is a restart, not a backend loss.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.conftest import shell_home
from tests.ws_viewer import Viewer

from . import scenarios
from .harness import FaultStack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-restart"), prefix="fr", VTERM_HEARTBEAT_TTL=60) as st:
        yield st


def test_worker_kill9_mid_command_adopts_and_runs_what_was_queued(fs):
    out = scenarios.worker_crash(fs)
    first, after, pwd = out.commands
    # The command that was running when the worker died went on in tmux and is adopted:
    # its end, exit code and output after the adoption are captured.
    assert (first["status"], first["exit_code"]) == ("succeeded", 0), first
    assert first["output"].endswith("released\n")
    # Commands accepted while the worker was down ran afterwards, in order, in the same shell.
    assert (after["status"], after["output"]) == ("succeeded", "after-1\n"), after
    assert (pwd["status"], pwd["output"]) == ("succeeded", "/tmp\n"), pwd
    assert after["started_at"] >= first["finished_at"] and pwd["started_at"] >= after["finished_at"]
    assert out.lost == 0 and out.recovered == 1


def test_an_adopted_command_keeps_its_timeouts(fs):
    """A command running when the worker dies keeps its timeout (counted from its start) and its idle
    timeout (from the adoption) under the worker that adopts it."""
    b = fs.backend_ids()[0]
    sids = [fs.session_on(b)["id"] for _ in range(2)]
    walled = fs.submit(sids[0], "echo walled; sleep 120", timeout=8)
    silent = fs.submit(sids[1], "echo silent; sleep 120", idle_timeout=6)
    for sid, cmd in zip(sids, (walled, silent)):
        fs.wait_running(sid, cmd["id"])
    fs.stack.stop_process(b, signal.SIGKILL)
    fs.restart_worker(b)
    walled, silent = fs.settle([walled, silent])
    assert (walled["status"], walled["reason"]) == ("timed_out", "timed out after 8 s"), walled
    assert (silent["status"], silent["reason"]) == ("timed_out", "no output for 6 s"), silent
    for sid in sids:
        assert fs.api.run(sid, "echo usable")["output"] == "usable\n"


def test_tmux_server_killed_rebuilds_the_shell_with_cwd_and_env(fs):
    out = scenarios.tmux_killed(fs)
    _, running, queued = out.commands
    assert running["status"] == "interrupted" and "tmux server" in running["reason"], running
    assert (queued["status"], queued["output"]) == ("succeeded", "kept\n/tmp\n"), queued
    assert out.lost == 0 and out.recovered == 1


def test_drain_moves_sessions_live_and_new_sessions_avoid_the_backend(fs):
    b = fs.backend_ids()[1]
    sid = fs.session_on(b, env={"FAULT_ENV": "kept"})["id"]
    cd = fs.api.run(sid, "cd /tmp")
    running = fs.submit(sid, "sleep 60")
    fs.wait_running(sid, running["id"])
    queued = fs.submit(sid, 'echo "$FAULT_ENV"; pwd')
    viewer = Viewer(fs.stack.url, sid, token=fs.api.token)

    assert fs.api.http.post(f"/api/v1/backends/{b}/drain/").status_code == 403
    assert fs.staff.http.post("/api/v1/backends/no-such-backend/drain/").status_code == 404
    r = fs.staff.http.post(f"/api/v1/backends/{b}/drain/")
    assert r.status_code == 202, r.text
    # Earlier tests here may have left sessions on it too (they all move).
    assert r.json()["id"] == b and r.json()["status"] == "draining" and r.json()["sessions"] >= 1, r.json()

    moved = fs.wait_session_active(sid, timeout=60, not_on=b)
    assert moved["cwd"] == "/tmp" and f"moved to backend {moved['backend']}" in moved["status_reason"]
    viewer.until(lambda f: f.get("type") == "status" and f.get("status") == "active", timeout=30)
    statuses = [f["status"] for f in viewer.frames if f.get("type") == "status"]
    assert statuses[-2:] == ["migrating", "active"], statuses
    viewer.close()

    ran, rerouted = fs.settle([running, queued])
    # The drain gave the running command DRAIN_GRACE seconds, then moved on without it.
    assert ran["status"] == "interrupted" and "draining" in ran["reason"], ran
    assert (rerouted["status"], rerouted["output"]) == ("succeeded", "kept\n/tmp\n"), rerouted
    assert cd["status"] == "succeeded"
    assert sid not in fs.tmux_windows(b), "the drained backend ended its copy"
    assert all(fs.api.create_session()["backend"] != b for _ in range(3)), "placement avoids a draining backend"


def _sleepers(cmd: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if f.read().replace(b"\0", b" ").strip() == cmd.encode():
                    found.append(int(p))
        except (OSError, ValueError):
            pass
    return found


def _backend_status(fs, backend_id: str) -> str:
    return next(b["status"] for b in fs.staff.http.get("/api/v1/backends/").json() if b["id"] == backend_id)


def _healthy_again(fs, backend_id: str) -> None:
    """A drained backend takes placements again once its worker restarts (a plain stop: it detaches)."""
    fs.stack.stop_process(backend_id)
    fs.restart_worker(backend_id)
    wait_for(lambda: _backend_status(fs, backend_id) == "healthy", 60, f"{backend_id} healthy again")


def test_drain_carries_the_live_environment_cwd_and_history(fs):
    for b in fs.backend_ids():
        if _backend_status(fs, b) != "healthy":  # the drain test above leaves one draining
            _healthy_again(fs, b)
    session = fs.api.create_session(env={"GIVEN": "at creation", "GONE": "x"})
    sid, b = session["id"], session["backend"]
    workdir = shell_home(fs.api, sid, fs.stack.config.data_dir)[1] + "/drained dir ✓"  # the shell's path
    assert fs.api.run(sid, f"mkdir -p '{workdir}'")["status"] == "succeeded"
    typed = ["export FOO='a b\"c'", "export NL=$'line1\\nline2' UNI='héllo ✓ =x'", "unset GONE",
             "export PATH=\"/opt/vterm-test:$PATH\"", f"cd '{workdir}'"]
    # A daemon of the session's: the stale copy left on the drained backend ends with everything in it.
    assert fs.api.run(sid, "setsid sleep 406 >/dev/null 2>&1 </dev/null &")["status"] == "succeeded"
    wait_for(lambda: _sleepers("sleep 406"), 10, "the daemon to run")
    for command in typed:
        assert fs.api.run(sid, command)["status"] == "succeeded", command

    try:
        r = fs.staff.http.post(f"/api/v1/backends/{b}/drain/")
        assert r.status_code == 202, r.text
        moved = fs.wait_session_active(sid, timeout=60, not_on=b)
        assert moved["cwd"] == str(workdir), moved
        assert "environment as read from its shell at" in moved["status_reason"], moved["status_reason"]
        assert moved["env"] == {"GIVEN": "at creation", "GONE": "x"}, "the API's env is the creation env"
        assert sid not in fs.tmux_windows(b)
        wait_for(lambda: not _sleepers("sleep 406"), 5, "the stale copy's daemon to be gone")

        # The new shell on the other backend has what was exported and unset there, and its cwd.
        check = 'printf "%s|" "$FOO" "$NL" "$UNI" "${GONE-unset}" "$GIVEN" "${PATH%%:*}"; echo; pwd'
        out = fs.api.run(sid, check)
        assert out["output"] == f'a b"c|line1\nline2|héllo ✓ =x|unset|at creation|/opt/vterm-test|\n{workdir}\n', out

        # Its history holds the commands that ran before the move (Up-arrow finds them).
        hist = fs.api.run(sid, f"history {len(typed) + 2}")["output"].splitlines()
        assert [line.split(None, 1)[1] for line in hist] == [*typed, check, f"history {len(typed) + 2}"], hist
        assert fs.api.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["Up", "Up"]}).status_code < 300

        def recalled():
            lines = fs.api.http.get(f"/api/v1/sessions/{sid}/screen/").json()["lines"]
            return any(line.rstrip().endswith(check) for line in lines)
        wait_for(recalled, 10, "Up-arrow to bring back a command from before the move")
        fs.api.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["C-u"]})

        # Reading the environment left nothing in the terminal's output stream.
        viewer = Viewer(fs.stack.url, sid, token=fs.api.token, since=0)
        viewer.until(lambda f: f.get("type") == "output" and "/opt/vterm-test|" in "".join(d for _, d in viewer.outputs),
                     timeout=30)
        viewer.close()
        assert "__vterm_env" not in "".join(d for _, d in viewer.outputs)
    finally:
        _healthy_again(fs, b)
