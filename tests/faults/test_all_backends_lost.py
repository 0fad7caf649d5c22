"""Every backend lost at once: nothing is left to run the reconcile on a backend, so the
control worker beat runs in (vterm_project/devstack.py beat_argv) must notice it.

At vterm's default settings (heartbeat every 2 s, TTL 7 s, reconcile every 3 s), but for
VTERM_POOL_START_GRACE=0: the whole-pool restart here is the case of its floor, one heartbeat
TTL (the default grace, 20 s: tests/faults/test_pool_defaults.py).
"""

from __future__ import annotations

import pytest

from . import scenarios
from .harness import FINAL, FaultStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL, INTERVAL = 7, 3


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-all-lost"), prefix="fa", at_defaults=True,
                    VTERM_POOL_START_GRACE=0) as st:
        yield st


def test_every_backend_lost_sessions_end_lost_and_commands_interrupted(fs):
    out = scenarios.every_backend_lost(fs)
    seen = out.seen
    ids = fs.backend_ids()

    # How soon it was noticed and settled is reported, not asserted (a shared, loaded machine): the
    # scenario waited for every session to be lost and every command to end.
    status, body, took_to_lost = seen["to_lost"]
    create_status, retry_after, took_create = seen["create"]
    list_status, took_list = seen["list"]
    print(f"\nsessions lost {seen['lost_after_s']:.1f} s after the fault (TTL {TTL:g} s, reconcile {INTERVAL:g} s); "
          f"every command final {out.recover_s:.1f} s after it; answers meanwhile: command to a lost session "
          f"{took_to_lost:.2f} s, new session {took_create:.2f} s, list {took_list:.2f} s")
    for b in ids:
        assert seen["backends"][b]["status"] == "dead", seen["backends"][b]
    for s in seen["sessions"]:
        assert s["status"] == "lost", s
        reason = s.get("status_reason", "")
        assert f"backend {s['backend']} was lost (no heartbeat" in reason, reason
        assert "no healthy backend could take it" in reason, reason

    # Every command that got a 201 ended, none is left queued or running: the `cd`s before the
    # fault succeeded; the running, the queued and the ones sent after the fault were interrupted.
    assert out.lost == 0, [c for c in out.commands if c["status"] not in FINAL]
    cds, rest = out.commands[:len(ids)], out.commands[len(ids):]
    assert all(c["status"] == "succeeded" for c in cds), cds
    assert len(rest) == 2 * len(ids) + seen["after_sent"]
    running, queued = rest[:len(ids)], rest[len(ids):]
    for c in running:
        assert c["status"] == "interrupted" and c["finished_at"], c
        assert "was lost (no heartbeat" in c["reason"], c
        # Lost where it was, or moved first to the other backend, not yet seen dead (heartbeats
        # are seconds apart), and lost there: either way the reason says so.
        assert ("no healthy backend could take the session" in c["reason"]
                or "when the session moved" in c["reason"]), c
    for c in queued:
        assert c["status"] == "interrupted" and c["finished_at"], c
        assert c["reason"].startswith("the session was lost: backend "), c

    # The API answers all along: a command for a lost session is a clear 409, a new session a 503
    # with Retry-After (no backend can take it), reads a 200.
    assert status == 409 and "lost" in str(body).lower(), (status, body)
    assert create_status == 503 and retry_after, (create_status, retry_after)
    assert list_status == 200

    # The backends came back (the scenario restarted them): they serve new sessions again.
    sid = fs.api.create_session()["id"]
    assert fs.api.run(sid, "echo back")["output"] == "back\n"


def test_whole_pool_restart_adopts_the_shells_instead_of_losing_them(fs):
    """The grace kept with the control worker: when the whole pool was down (every worker and
    beat gone, tmux servers alive, then all started again), the reconcile restarts with every heartbeat stale;
    no backend is declared dead for one heartbeat TTL, and each adopts its shells."""
    import signal
    import time

    from .harness import wait_for

    ids = fs.backend_ids()
    sids = [fs.session_on(b)["id"] for b in ids]
    for sid in sids:
        assert fs.api.run(sid, "MARK=same-shell")["status"] == "succeeded"  # not exported: a new shell would lack it
    # The whole pool crashes (kill -9, as when the machine's processes are killed); the tmux
    # servers and their shells live on.
    fs.stack.stop_process("beat", signal.SIGKILL)
    for b in ids:
        fs.stack.stop_process(b, signal.SIGKILL)
    time.sleep(TTL + 2)  # every heartbeat is stale now, and the reconcile has not run for as long
    fs.stack.start_process(fs.stack.spec("beat"))  # the control worker may well come up first
    starts = {b: fs.worker_starts(b) for b in ids}
    for b in ids:  # all at once, as a supervisor starts them
        fs.stack.start_process(fs.stack.spec(b))
    wait_for(lambda: all(fs.worker_starts(b) > starts[b] for b in ids), 90, "the workers to come up")
    wait_for(fs.stack.ready, 60, "every backend healthy again")
    time.sleep(TTL + 2 * INTERVAL)  # past the grace: nothing is declared dead afterwards either
    backends = {b["id"]: b for b in fs.staff.http.get("/api/v1/backends/").json()}
    assert all(backends[b]["status"] == "healthy" for b in ids), backends
    for sid, b in zip(sids, ids, strict=True):
        s = fs.session(sid)
        assert (s["status"], s["backend"]) == ("active", b), s
        assert fs.api.run(sid, 'echo "$MARK"')["output"] == "same-shell\n"
