"""The pool's own repairs, at vterm's default settings (heartbeat every 2 s, TTL 7 s, reconcile
3 s, orphan sweep 30 s, pool start grace 20 s, hand-off check 5 s after 5 s): docs/failover.md.

- Epoch fencing: a ``run`` message naming a placement older than its shell's is refused.
- The orphan sweep: a tmux window with no live record on its backend is killed; a live record
  with no shell on its backend is moved.
- /readyz answers 503 naming what failed: the database, the backends.
- A whole-pool restart: no backend is declared dead for POOL_START_GRACE, so each comes back
  and adopts its shells.

Times are printed (``-s`` shows them), never asserted: the machine is shared.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.conftest import shell_home
from vterm_project.devstack import Proc, free_port
from vterm_project.redis_config import client_for_url

from .harness import FaultStack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL, RECONCILE, ORPHAN_INTERVAL, POOL_START_GRACE = 7.0, 3.0, 30.0, 20.0  # vterm's defaults
PREFIX = "fpd"


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-pool-defaults"), prefix=PREFIX,
                    at_defaults=True) as st:
        yield st


def test_a_run_message_for_an_old_epoch_is_refused_by_the_backend(fs):
    b = fs.backend_ids()[0]
    sid = fs.session_on(b)["id"]
    host_home, home = shell_home(fs.api, sid, fs.stack.config.data_dir)
    old = fs.session_epoch(sid)
    # Its tmux server dies: the session gets a new shell (here or on the other backend) and a new
    # placement, with its epoch bumped.
    fs.kill_tmux(b)
    wait_for(lambda: fs.session_epoch(sid) > old and fs.session(sid)["status"] == "active", 60,
             "the session rebuilt at a new epoch")
    new = fs.session_epoch(sid)

    # A hand-off naming the current placement runs (what the web sends for every command)...
    current = fs.record_without_handoff(sid, f"touch {home}/fenced-current; echo current")
    fs.hand_off(current, epoch=new)
    ran = fs.api.wait_command(sid, current, timeout=30)
    assert (ran["status"], ran["output"]) == ("succeeded", "current\n"), ran
    # ...one naming the old placement (sent before the move, delivered after it) is refused. The
    # command after it, handed off behind it on the same inbox, runs; the refused one is then
    # found by the hand-off check, overtaken, and ends `interrupted` without running.
    stale = fs.record_without_handoff(sid, f"touch {home}/fenced-stale; echo stale")
    fs.hand_off(stale, epoch=old)
    later = fs.api.run(sid, "echo later")
    assert (later["status"], later["output"]) == ("succeeded", "later\n"), later
    t = time.monotonic()
    refused = fs.api.wait_command(sid, stale, timeout=60)
    print(f"\nepochs {old} -> {new}; the refused command ended {time.monotonic() - t:.1f} s after the next "
          f"one ran: {refused['status']} ({refused['reason']})")
    assert refused["status"] == "interrupted", refused
    assert "a later command of the session already ran" in refused["reason"], refused
    assert not refused["output"] and not (host_home / "fenced-stale").exists(), "the stale run was carried out"
    assert (host_home / "fenced-current").exists()
    backend = fs.session(sid)["backend"]
    log = (fs.stack.log_dir / f"{backend}.log").read_text(errors="replace")
    assert f"command {stale}: stale epoch {old} < {new}, refused" in log


def test_orphan_sweep_kills_windows_with_no_record_and_moves_records_with_no_shell(fs):
    b, other = fs.backend_ids()
    gone = fs.session_on(b)["id"]
    moved = fs.session_on(b)["id"]
    assert fs.api.run(moved, "MARK=old-shell")["status"] == "succeeded"  # not exported: a new shell lacks it
    assert {gone, moved} <= set(fs.tmux_windows(b))
    # The database as a restore from an earlier backup leaves it (docs/backup.md): one session
    # that was created after the backup has no record at all; another's record says it lives on
    # the other backend, which has no shell for it.
    epoch = fs.session_epoch(moved)
    fs.django("from sessions.models import TerminalSession as T\n"
              f"T.objects.filter(pk={gone!r}).delete()\n"
              f"T.objects.filter(pk={moved!r}).update(backend_id={other!r})\n"
              "print('ok')\n")
    t0 = time.monotonic()
    wait_for(lambda: gone not in fs.tmux_windows(b), 3 * ORPHAN_INTERVAL, "the window with no record to be killed")
    killed_s = time.monotonic() - t0

    def rebuilt():
        return fs.session_epoch(moved) > epoch and fs.session(moved)["status"] == "active"
    wait_for(rebuilt, 3 * ORPHAN_INTERVAL, "the record with no shell to be moved")
    moved_s = time.monotonic() - t0
    print(f"\norphan sweep (every {ORPHAN_INTERVAL:g} s): window with no record killed after {killed_s:.1f} s, "
          f"record with no shell moved after {moved_s:.1f} s")

    migrating = [reason for status, reason, _ in fs.session_events(moved) if status == "migrating"]
    assert migrating and migrating[-1].startswith(f"its shell was gone from backend {other}; moving from {other}"), \
        migrating
    # A new shell (the old copy on b is gone, not used), and it serves.
    assert fs.api.run(moved, 'echo "${MARK-new shell}"')["output"] == "new shell\n"
    assert sum(moved in fs.tmux_windows(x) for x in fs.backend_ids()) == 1


def test_readyz_names_the_database_when_it_does_not_answer(fs):
    """A web node whose database does not answer (nothing listens at its DATABASE_URL's address)."""
    port = free_port()
    web = fs.stack.spec("web")
    argv = [str(port) if a == str(fs.stack.config.port) else a for a in web.argv]
    dead_db = f"postgres://vterm@127.0.0.1:{free_port()}/vterm?connect_timeout=2"
    fs.stack.start_process(Proc("web-no-database", argv, {**web.env, "DATABASE_URL": dead_db}))
    try:
        def answered():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=30)
            except httpx.TransportError:
                return None
        r = wait_for(answered, 60, "the web node without a database to answer")
        body = r.json()
        print(f"\n/readyz with no database: {r.status_code} {body}")
        assert r.status_code == 503, body
        assert body["failed"] == ["database"] and body["checks"]["database"].startswith("error:"), body
        assert body["checks"]["redis"] == "ok", body
    finally:
        fs.stack.stop_process("web-no-database")
    assert fs.readyz()[0] == 200  # the stack's own web node was never affected


def test_whole_pool_restart_keeps_its_shells_through_the_default_pool_start_grace(fs):
    """Every worker and beat killed (tmux servers alive), then started again as `make run` would:
    the reconcile starts with every heartbeat stale. Workers started a heartbeat TTL after it
    (past a grace of one TTL) are not declared dead: they come back and adopt their shells."""
    ids = fs.backend_ids()
    r = client_for_url(fs.stack.config.redis_url)
    grace_key = f"{PREFIX}:vterm:reconcile:grace"
    sids = [fs.session_on(b)["id"] for b in ids]
    for sid in sids:
        assert fs.api.run(sid, "MARK=same-shell")["status"] == "succeeded"  # not exported

    fs.stack.stop_process("beat", signal.SIGKILL)
    for b in ids:
        fs.stack.stop_process(b, signal.SIGKILL)
    t_kill = time.monotonic()
    # While the pool is down, /readyz says so and names the backends, once their heartbeats are stale.
    status, ready = wait_for(lambda: (got := fs.readyz())[0] == 503 and got, 60, "/readyz to answer 503")
    print(f"\n/readyz {time.monotonic() - t_kill:.1f} s after the pool died: {status} {ready}")
    assert ready["failed"] == [f"backends: no healthy backend ({', '.join(sorted(ids))} down)"], ready
    assert sorted(ready["checks"]["backends_down"]) == sorted(ids) and ready["checks"]["redis"] == "ok", ready
    # Long enough that the reconcile's next run is a (re)start.
    time.sleep(max(0.0, max(3 * RECONCILE, TTL) + 1 - (time.monotonic() - t_kill)))

    fs.stack.start_process(fs.stack.spec("beat"))  # the control worker comes up first
    wait_for(lambda: r.exists(grace_key), 60, "the reconcile to run and start its grace")
    t_grace = time.monotonic()
    time.sleep(TTL)  # a grace of one TTL (VTERM_POOL_START_GRACE=0) would be over now
    starts = {b: fs.worker_starts(b) for b in ids}
    for b in ids:
        fs.stack.start_process(fs.stack.spec(b))
    wait_for(lambda: all(fs.worker_starts(b) > starts[b] for b in ids), 90, "the workers to come up")
    up_s = time.monotonic() - t_grace
    wait_for(lambda: not r.exists(grace_key), 60, "the grace to end")
    time.sleep(2 * RECONCILE)  # reconciles after the grace, judging every heartbeat
    print(f"workers started {TTL:g} s into the grace were up {up_s:.1f} s into it "
          f"(VTERM_POOL_START_GRACE {POOL_START_GRACE:g} s)")

    backends = {x["id"]: x["status"] for x in fs.staff.http.get("/api/v1/backends/").json()}
    assert all(backends[b] == "healthy" for b in ids), backends
    for sid, b in zip(sids, ids, strict=True):
        s = fs.session(sid)
        assert (s["status"], s["backend"]) == ("active", b), s
        assert fs.api.run(sid, 'echo "$MARK"')["output"] == "same-shell\n"
    assert fs.readyz()[0] == 200
