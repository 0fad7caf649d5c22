"""A move that does not finish (docs/failover.md, row "a move that does not finish"): after
VTERM_MIGRATE_TIMEOUT (its default, 30 s) the reconcile tries another backend, or, with none
left, the session ends ``lost`` with the reason, its unfinished commands ``interrupted``.

The move is made stuck as a wedged worker makes it: the backend it goes to is frozen (SIGSTOP)
after it was chosen, so it never starts the shell. Its heartbeat TTL is 60 s here instead of 7,
so that a backend frozen for the timeout is not declared dead (that is the lost-backend case,
tests elsewhere); the reconcile's start grace, one TTL, is ended by hand after the stack starts
for the same reason. The rest is at vterm's defaults (reconcile 3 s, migrate timeout 30 s).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from vterm_project.redis_config import client_for_url

from .harness import FaultStack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIGRATE_TIMEOUT = 30.0  # vterm's default, which this stack keeps
PREFIX = "fsm"


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-stuck-move"), prefix=PREFIX, at_defaults=True,
                    VTERM_HEARTBEAT_TTL=60) as st:
        r = client_for_url(redis_url)
        wait_for(lambda: r.exists(f"{PREFIX}:vterm:reconcile:grace"), 60, "the reconcile's first run")
        r.delete(f"{PREFIX}:vterm:reconcile:grace")
        yield st


def _status(fs, backend_id: str) -> str:
    return next(b["status"] for b in fs.staff.http.get("/api/v1/backends/").json() if b["id"] == backend_id)


def _stuck_on(fs, frozen: str, sid: str, source: str) -> float:
    """Freeze ``frozen``, drain ``source``: the session is sent to the frozen backend. When it was."""
    os.killpg(fs.stack.procs[frozen].pid, signal.SIGSTOP)
    r = fs.staff.http.post(f"/api/v1/backends/{source}/drain/")
    assert r.status_code == 202, r.text

    def migrating():
        s = fs.session(sid)
        return s["status"] == "migrating" and s["backend"] == frozen
    wait_for(migrating, 60, f"the session to be moving to {frozen}")
    return time.monotonic()


def _thaw(fs, frozen: str) -> None:
    os.killpg(fs.stack.procs[frozen].pid, signal.SIGCONT)


def _late_start_fenced(fs, frozen: str, sid: str) -> None:
    """The thawed backend carries out the start it was sent while frozen: it finds the session placed
    elsewhere (fenced) and ends the shell it made. A session started there afterwards was taken off
    the same queue after it, so that start is under way or done by then (on its start threads)."""
    fs.session_on(frozen)
    wait_for(lambda: sid not in fs.tmux_windows(frozen), 30,
             "the thawed backend to end the shell it made for a session placed elsewhere")


def _healthy_again(fs, backend_id: str) -> None:
    """A drained backend takes placements again once its worker restarts (a plain stop: it detaches)."""
    fs.stack.stop_process(backend_id)
    fs.restart_worker(backend_id)
    wait_for(lambda: _status(fs, backend_id) == "healthy", 60, f"{backend_id} healthy again")


def test_a_stuck_move_with_nowhere_else_to_go_ends_lost(fs):
    source, frozen = fs.backend_ids()
    sid = fs.session_on(source)["id"]
    assert fs.api.run(sid, "cd /tmp")["status"] == "succeeded"
    try:
        t0 = _stuck_on(fs, frozen, sid, source)
        queued = fs.submit(sid, "echo never")  # accepted while it moves: it waits in the database
        assert queued is not None
        lost = wait_for(lambda: (s := fs.session(sid))["status"] == "lost" and s, 4 * MIGRATE_TIMEOUT,
                        "the stuck move to end the session lost")
        print(f"\nstuck move given up {time.monotonic() - t0:.1f} s after it began "
              f"(VTERM_MIGRATE_TIMEOUT {MIGRATE_TIMEOUT:g} s): {lost['status_reason']}")
    finally:
        _thaw(fs, frozen)
    assert lost["status_reason"] == (f"backend {frozen} did not start the shell in time; "
                                     "no healthy backend could take it"), lost
    ended = fs.settle([queued], timeout=30)[0]
    assert ended["status"] == "interrupted" and ended["reason"].startswith("the session was lost: "), ended
    r = fs.api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"})
    assert r.status_code == 409, r.text
    _late_start_fenced(fs, frozen, sid)
    assert fs.session(sid)["status"] == "lost"
    _healthy_again(fs, source)


def test_a_stuck_move_is_tried_on_another_backend(fs):
    source, frozen = fs.backend_ids()
    sid = fs.session_on(source, env={"FAULT_ENV": "kept"})["id"]
    assert fs.api.run(sid, "cd /tmp")["status"] == "succeeded"
    try:
        t0 = _stuck_on(fs, frozen, sid, source)
        queued = fs.submit(sid, 'echo "$FAULT_ENV"; pwd')
        assert queued is not None
        # The drained backend comes back (its worker restarted): somewhere else to go.
        _healthy_again(fs, source)
        moved = fs.wait_session_active(sid, timeout=4 * MIGRATE_TIMEOUT)
        print(f"\nstuck move tried again {time.monotonic() - t0:.1f} s after it began "
              f"(VTERM_MIGRATE_TIMEOUT {MIGRATE_TIMEOUT:g} s): {moved['status_reason']}")
    finally:
        _thaw(fs, frozen)
    assert moved["backend"] == source, moved
    migrating = [reason for status, reason, _ in fs.session_events(sid) if status == "migrating"]
    assert migrating[-1].startswith(f"backend {frozen} did not start the shell in time; moving from {frozen} "
                                    f"to {source}"), migrating
    ran = fs.settle([queued], timeout=60)[0]
    assert (ran["status"], ran["output"]) == ("succeeded", "kept\n/tmp\n"), ran
    _late_start_fenced(fs, frozen, sid)
    s = fs.session(sid)
    assert (s["status"], s["backend"]) == ("active", source), s
    assert fs.api.run(sid, "echo still")["output"] == "still\n"
