"""The faults: each injects one into a live FaultStack and returns what it left (an Outcome).

Time to recover is measured from the fault (or, for Redis, from its return) until
the affected sessions serve commands again. Each scenario leaves the stack whole
for the next (it restarts what it killed).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

from tests.conftest import shell_home

from .harness import FINAL, FaultStack, Outcome, PrivateRedis, run_load, tally, wait_for

__all__ = ["FINAL"]


def _served(fs: FaultStack, sid: str, timeout: float = 60) -> float:
    """Seconds until a command in ``sid`` runs end to end; retried through 503s and refusals."""
    t0 = time.monotonic()

    def ok():
        c = fs.submit(sid, "true", wait=5)
        return c is not None and c["status"] == "succeeded"
    wait_for(ok, timeout, "a command to be served", interval=0.2)
    return time.monotonic() - t0


def worker_crash(fs: FaultStack) -> Outcome:
    """kill -9 a worker mid-command, tmux left alive; commands are sent while it is down."""
    out = Outcome("worker kill -9 mid-command (tmux alive)", sessions=1)
    b = fs.backend_ids()[0]
    sid = fs.session_on(b)["id"]
    host_home, home = shell_home(fs.api, sid, fs.stack.config.data_dir)
    name = f"release-{uuid.uuid4().hex}"
    flag = host_home / name  # where the shell sees it: its home
    first = fs.submit(sid, f"cd /tmp && while [ ! -e {home}/{name} ]; do sleep 0.05; done; echo released")
    fs.wait_running(sid, first["id"])
    t0 = time.monotonic()
    fs.stack.stop_process(b, signal.SIGKILL)
    later = [fs.submit(sid, "echo after-1"), fs.submit(sid, "pwd")]
    fs.restart_worker(b)
    flag.touch()
    ended = fs.settle([first, *[c for c in later if c]])
    out.recover_s = time.monotonic() - t0
    if fs.session(sid)["status"] == "active":
        out.recovered = 1
    out.notes.append(f"{len(later) - later.count(None)} of {len(later)} sent while the worker was down")
    return tally(out, ended)


def tmux_killed(fs: FaultStack) -> Outcome:
    """The tmux server of a backend dies under its live worker."""
    out = Outcome("tmux server killed (worker alive)", sessions=1)
    b = fs.backend_ids()[0]
    sid = fs.session_on(b, env={"FAULT_ENV": "kept"})["id"]
    cd = fs.api.run(sid, "cd /tmp")
    running = fs.submit(sid, "sleep 60")
    fs.wait_running(sid, running["id"])
    queued = fs.submit(sid, 'echo "$FAULT_ENV"; pwd')
    t0 = time.monotonic()
    fs.kill_tmux(b)
    fs.wait_session_active(sid, timeout=60)
    ended = fs.settle([running, queued])
    out.recover_s = time.monotonic() - t0
    out.recovered = int(fs.session(sid)["status"] == "active")
    return tally(out, [cd, *ended])


def backend_lost(fs: FaultStack) -> Outcome:
    """Worker and tmux server both killed, as when a machine dies."""
    out = Outcome("backend lost (worker kill -9 + tmux killed)", sessions=2)
    b = fs.backend_ids()[0]
    sids = [fs.session_on(b, env={"FAULT_ENV": "kept"})["id"] for _ in range(2)]
    acked = [fs.api.run(sid, "cd /tmp") for sid in sids]
    # Exported after creation: read from the shell after the command (workers/env_tracker.py), since
    # a machine that dies cannot be asked at the move.
    acked += [fs.api.run(sid, "export LATER_ENV='exported later'") for sid in sids]
    for sid in sids:
        fs.wait_live_env(sid, "LATER_ENV")
    running = fs.submit(sids[0], "sleep 60")
    fs.wait_running(sids[0], running["id"])
    t0 = time.monotonic()
    fs.stack.stop_process(b, signal.SIGKILL)
    fs.kill_tmux(b)
    queued = [fs.submit(sid, 'echo "$FAULT_ENV, $LATER_ENV"; pwd') for sid in sids]
    for sid in sids:
        fs.wait_session_active(sid, timeout=60, not_on=b)
    out.recover_s = time.monotonic() - t0
    ended = fs.settle([running, *[q for q in queued if q]])
    out.recovered = sum(fs.session(sid)["status"] == "active" for sid in sids)
    fs.restart_worker(b)
    return tally(out, [*acked, *ended])


def worker_returns_late(fs: FaultStack) -> Outcome:
    """A worker is down past the heartbeat TTL (its sessions move), then comes back with its
    tmux server and the stale shells: it must kill them, not act on them."""
    out = Outcome("worker down past TTL, returns late (fencing)", sessions=1)
    b = fs.backend_ids()[0]
    sid = fs.session_on(b)["id"]
    running = fs.submit(sid, "sleep 60")
    fs.wait_running(sid, running["id"])
    t0 = time.monotonic()
    fs.stack.stop_process(b, signal.SIGKILL)
    fs.wait_session_active(sid, timeout=60, not_on=b)
    out.recover_s = time.monotonic() - t0
    assert sid in fs.tmux_windows(b), "the stale shell is still in the dead backend's tmux"
    fs.restart_worker(b)
    wait_for(lambda: sid not in fs.tmux_windows(b), 30, "the returning backend to kill its stale shell")
    after = fs.api.run(sid, "echo moved")
    ended = fs.settle([running])
    out.recovered = int(after["status"] == "succeeded")
    return tally(out, [*ended, after])


def web_restart(fs: FaultStack, load_s: float = 2.0) -> Outcome:
    """kill -9 the web node under load, start it again."""
    out = Outcome("web node kill -9 + restart under load", sessions=2)
    sids = [fs.api.create_session()["id"] for _ in range(2)]
    stop, acked, errors = threading.Event(), [], []
    load = threading.Thread(target=run_load, args=(fs, sids, stop, acked, errors), daemon=True)
    load.start()
    time.sleep(load_s)
    t0 = time.monotonic()
    fs.stack.stop_process("web", signal.SIGKILL)
    fs.stack.start_process(fs.stack.spec("web"))
    n = len(acked)
    wait_for(lambda: len(acked) > n, 60, "the web node to serve again", interval=0.05)
    out.recover_s = time.monotonic() - t0
    time.sleep(load_s)
    stop.set()
    load.join(30)
    ended = fs.settle(list(acked))
    out.recovered = sum(fs.session(sid)["status"] == "active" for sid in sids)
    out.notes.append(f"{len(errors)} request(s) refused or cut while the web node was down")
    return tally(out, ended)


def redis_restart(fs: FaultStack, redis: PrivateRedis, down_s: float = 2.0) -> Outcome:
    """Redis stops (SIGTERM, AOF) and starts again; commands in flight and queued survive."""
    out = Outcome("Redis restart (AOF)", sessions=1)
    sid = fs.api.create_session()["id"]
    before = fs.api.run(sid, "echo before")
    running = fs.submit(sid, "sleep 1; echo across")
    fs.wait_running(sid, running["id"])
    redis.stop()
    time.sleep(down_s)
    during = fs.submit(sid, "echo during")  # 503 (not acknowledged) unless Redis is back
    redis.start()
    out.recover_s = _served(fs, sid)
    ended = fs.settle([before, running, *([during] if during else [])])
    out.recovered = int(fs.session(sid)["status"] == "active")
    return tally(out, ended)


def redis_pause(fs: FaultStack, redis: PrivateRedis, pause_s: float = 4.0) -> Outcome:
    """Redis stops answering (SIGSTOP) for a few seconds, then goes on (SIGCONT)."""
    out = Outcome("Redis paused (SIGSTOP/SIGCONT)", sessions=1)
    sid = fs.api.create_session()["id"]
    running = fs.submit(sid, "sleep 1; echo across")
    fs.wait_running(sid, running["id"])
    redis.pause()
    t_pause = time.monotonic()
    replies = []
    try:
        while time.monotonic() - t_pause < pause_s:
            t = time.monotonic()
            try:
                r = fs.api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "echo paused"},
                                     timeout=30)
                replies.append((r.status_code, r.headers.get("Retry-After"), time.monotonic() - t,
                                r.json() if r.status_code == 201 else None))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted on by the test
                replies.append((exc.__class__.__name__, None, time.monotonic() - t, None))
    finally:
        redis.resume()
    out.recover_s = _served(fs, sid)
    acked = [running, *[r[3] for r in replies if r[3]]]
    ended = fs.settle(acked)
    out.recovered = int(fs.session(sid)["status"] == "active")
    out.notes.append("replies while paused: " + ", ".join(f"{r[0]} in {r[2]:.1f}s" for r in replies))
    out.replies = replies
    return tally(out, ended)


def worker_paused(fs: FaultStack) -> Outcome:
    """A worker freezes (SIGSTOP) past the heartbeat TTL, its sessions move, then it goes on
    (SIGCONT) still holding the stale shells: told it was dead, it must kill them."""
    out = Outcome("worker paused past TTL, then resumes (fencing)", sessions=1)
    b = fs.backend_ids()[0]
    sid = fs.session_on(b)["id"]
    running = fs.submit(sid, "sleep 60")
    fs.wait_running(sid, running["id"])
    pgid = fs.stack.procs[b].pid
    t0 = time.monotonic()
    os.killpg(pgid, signal.SIGSTOP)
    try:
        fs.wait_session_active(sid, timeout=60, not_on=b)
        out.recover_s = time.monotonic() - t0
        assert sid in fs.tmux_windows(b), "the stale shell is still in the frozen backend's tmux"
    finally:
        os.killpg(pgid, signal.SIGCONT)
    wait_for(lambda: sid not in fs.tmux_windows(b), 30, "the resumed backend to kill its stale shell")
    wait_for(fs.stack.ready, 30, "the resumed backend to be healthy again")
    after = fs.api.run(sid, "echo moved")
    ended = fs.settle([running])
    out.recovered = int(after["status"] == "succeeded")
    return tally(out, [*ended, after])


def every_backend_lost(fs: FaultStack) -> Outcome:
    """Every backend worker and its tmux server killed at once (the machine with the only
    backends died): with nowhere to move them, the sessions end ``lost`` with a reason and
    every command that got a 201 ends ``interrupted``; the control worker that runs beat
    notices it on its own, since no backend is left to run the reconcile."""
    out = Outcome("every backend lost (all workers kill -9 + tmux killed)", sessions=len(fs.backend_ids()))
    sids = [fs.session_on(b)["id"] for b in fs.backend_ids()]
    acked = [fs.api.run(sid, "cd /tmp") for sid in sids]
    running = [fs.submit(sid, "sleep 60") for sid in sids]
    for sid, c in zip(sids, running, strict=True):
        fs.wait_running(sid, c["id"])
    queued = [fs.submit(sid, "echo never") for sid in sids]
    t0 = time.monotonic()
    for b in fs.backend_ids():
        fs.stack.stop_process(b, signal.SIGKILL)
        fs.kill_tmux(b)
    # Sent after the fault, before it is noticed: still acknowledged, and must end too.
    after = [fs.submit(sid, "echo after-the-fault") for sid in sids]

    def all_lost():
        ss = [fs.session(sid) for sid in sids]
        return all(s["status"] == "lost" for s in ss) and ss
    out.seen["sessions"] = wait_for(all_lost, 60, "every session to be lost")
    out.seen["lost_after_s"] = time.monotonic() - t0
    ended = fs.settle([*running, *queued, *[c for c in after if c]], timeout=30)
    out.recover_s = time.monotonic() - t0  # until everything acknowledged was in a definite state
    out.seen["backends"] = {b["id"]: b for b in fs.staff.http.get("/api/v1/backends/").json()}
    out.seen["sessions"] = [fs.session(sid) for sid in sids]  # as they stand once settled
    out.seen["after_sent"] = sum(c is not None for c in after)
    # With every backend dead the API still answers at once: reads, a command to a lost session, a new session.
    t = time.monotonic()
    r = fs.api.http.post(f"/api/v1/sessions/{sids[0]}/commands/", json={"command": "echo too-late"}, timeout=10)
    out.seen["to_lost"] = (r.status_code, r.json(), time.monotonic() - t)
    t = time.monotonic()
    r = fs.api.http.post("/api/v1/sessions/", json={}, timeout=10)
    out.seen["create"] = (r.status_code, r.headers.get("Retry-After"), time.monotonic() - t)
    t = time.monotonic()
    r = fs.api.http.get("/api/v1/sessions/", timeout=10)
    out.seen["list"] = (r.status_code, time.monotonic() - t)
    out.notes.append(f"sessions lost {out.seen['lost_after_s']:.1f} s after the fault")
    # Leave the stack whole for what comes next.
    for b in fs.backend_ids():
        fs.restart_worker(b)
    wait_for(fs.all_backends_healthy, 60, "every backend healthy again")
    return tally(out, [*acked, *ended])
