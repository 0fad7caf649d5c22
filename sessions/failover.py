"""Fault tolerance: dead backends, moving sessions, draining, and the periodic reconcile.

A session moves under a Redis lock (one mover at a time) and with its epoch bumped in
the database (the fencing token): whatever still acts with the old epoch is refused,
so a backend that comes back late cannot touch a session that moved (DESIGN.md §7).

Moving is asynchronous: ``session_migrate`` places the session on a new backend, marks
it ``migrating`` and sends the new backend a ``session_start`` with ``resume``; that
backend rebuilds the shell (cwd, env), then ``session_resumed`` makes it ``active`` and
hands it the session's queued commands, in order. Nothing here waits on a backend, so
the reconcile can run on any worker, including the one a session moves to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Max
from django.utils import timezone
from redis.exceptions import LockError

from . import webhooks
from .circuit import breaker_record_failure
from .jobs import jobs_end_unfinished
from .models import Backend, Command, TerminalSession
from .pool import backend_pick_least_loaded, backends_alive_cutoff
from .redis_state import (
    orphans_throttle_key,
    reconcile_grace_key,
    reconcile_last_key,
    reconcile_lock_key,
    session_lock_key,
    sync_client,
)
from .replies import send_to_backend
from .services import (
    COMMAND_RUN_FIELDS,
    T,
    command_run_spec,
    commands_queued,
    session_set_status,
    session_started,
)

log = logging.getLogger(__name__)

LOCK_TIMEOUT = 30  # seconds a mover may hold a session's lock (a mover that dies frees it then)
HISTORY_CARRIED = 500  # past commands a moved shell's history starts with (bash's default HISTSIZE)
S = TerminalSession.Status


# -- moving sessions ----------------------------------------------------------------------


def _commands_end(session_id, statuses, reason: str) -> int:
    """End the session's commands in ``statuses``; its running background jobs end with the same
    reason (they ran on the backend it leaves, or that was lost)."""
    jobs_end_unfinished(session_id, reason)
    now = timezone.now()
    ended = Command.objects.filter(session_id=session_id, status__in=statuses).update(
        status=Command.Status.INTERRUPTED, reason=reason[:500], finished_at=now)
    if ended:
        webhooks.deliveries_begin(Command.objects.filter(session_id=session_id, finished_at=now))
    return ended


def _last_cwd(session: TerminalSession) -> str:
    """Where the shell last was: the newest finished command's cwd, else the session's."""
    cwd = (Command.objects.filter(session=session).exclude(cwd="").order_by("-seq")
           .values_list("cwd", flat=True).first())
    return cwd or session.cwd


def _moved_env(session: TerminalSession) -> tuple[dict, str]:
    """The environment a moved shell starts with, and what its status reason says of it."""
    if session.live_env is not None:
        at = f" at {session.live_env_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if session.live_env_at else ""
        return session.live_env, f"environment as read from its shell{at}"
    return session.env, "environment as created: variables exported in its shell were not carried"


def session_live_env_record(*, session_id: str, backend_id: str, epoch: int, env: dict[str, str]) -> bool:
    """Keep the environment just read from a session's shell (after a command that may have changed
    it), so that a move after a hard loss starts from it. Fenced: only the backend holding it."""
    return bool(TerminalSession.objects.filter(pk=session_id, backend_id=backend_id, epoch=epoch,
                                               status__in=TerminalSession.LIVE)
                .update(live_env=env, live_env_at=timezone.now()))


def session_history(session_id) -> list[str]:
    """The session's last HISTORY_CARRIED commands that ran, oldest first (a moved shell's history)."""
    texts = (Command.objects.filter(session_id=session_id, started_at__isnull=False)
             .exclude(status=Command.Status.QUEUED).order_by("-seq").values_list("command", flat=True))
    return list(texts[:HISTORY_CARRIED])[::-1]


def session_migrate(session: TerminalSession, *, reason: str, cwd: str | None = None, env: dict | None = None,
                    exclude: tuple[str, ...] = ()) -> TerminalSession:
    """Rebuild ``session`` on another healthy backend, or mark it ``lost`` when none can take it.

    ``cwd``: the live shell's directory (a drain captures it); else the last one known.
    ``env``: the live shell's exported environment (a drain reads it; kept as ``live_env``);
    else the last one read, else the creation ``env`` (the status reason says which).
    A command that was running ends ``interrupted`` with ``reason``; queued ones are kept
    and run on the new backend in order. Another mover holding the lock wins: no-op.
    """
    lock = sync_client().lock(session_lock_key(str(session.pk)), timeout=LOCK_TIMEOUT)
    if not lock.acquire(blocking=False):
        log.info("session %s is being moved by someone else", session.pk)
        return session
    try:
        session.refresh_from_db()
        if not session.is_live:
            return session
        old = session.backend_id or "none"
        cwd = cwd or _last_cwd(session)
        target = backend_pick_least_loaded(exclude=exclude)
        if target is None:
            # Nowhere to go (every backend dead, draining or full): lost, never left `active`.
            _commands_end(session.pk, [Command.Status.RUNNING], f"{reason}: it was running on backend {old}, "
                          "and no healthy backend could take the session")
            session_lose(session, f"{reason}; no healthy backend could take it")
            return session
        _commands_end(session.pk, [Command.Status.RUNNING],
                      f"{reason}: it was running on backend {old} when the session moved")
        fields = {"live_env": env, "live_env_at": timezone.now()} if env is not None else {}
        with transaction.atomic():
            moved = TerminalSession.objects.filter(pk=session.pk, epoch=session.epoch).update(
                epoch=F("epoch") + 1, backend=target, cwd=cwd, **fields)
            if not moved:
                return session  # moved meanwhile (fenced)
            session.refresh_from_db()
            env, env_note = _moved_env(session)
            session_set_status(session, S.MIGRATING, f"{reason}; moving from {old} to {target.id}; {env_note}")
        send_to_backend(target.queue, T + "session_start", str(session.pk), session.epoch, cwd, env,
                        session.cols, session.rows, resume=True)
        log.info("session %s: %s -> %s (epoch %d): %s", session.pk, old, target.id, session.epoch, reason)
        return session
    finally:
        try:
            lock.release()
        except LockError:
            pass  # expired: the epoch still fences


def session_lose(session: TerminalSession, reason: str) -> None:
    """The session cannot live anywhere: ``lost``, with every unfinished command ended."""
    with transaction.atomic():
        TerminalSession.objects.filter(pk=session.pk).update(epoch=F("epoch") + 1)
        session.refresh_from_db()
        session_set_status(session, S.LOST, reason)
        _commands_end(session.pk, [Command.Status.QUEUED, Command.Status.RUNNING], f"the session was lost: {reason}")


def session_resumed(*, session_id: str, epoch: int, backend_id: str, cwd: str, note: str = "") -> list[dict] | None:
    """The new backend's shell is up: ``active`` again. Returns the queued commands to run there,
    oldest first, or None when the placement moved on meanwhile (fencing)."""
    with transaction.atomic():
        # Locks the row first: command_create either queued its command before (it is in the
        # list) or sees the session active after (it sends the command itself).
        updated = TerminalSession.objects.filter(pk=session_id, epoch=epoch, backend_id=backend_id,
                                                 status=S.MIGRATING).update(cwd=cwd)
        if not updated:
            return None
        queued = commands_queued(session_id)
        session = TerminalSession.objects.get(pk=session_id)
        notes = "; ".join(n for n in (note, _moved_env(session)[1]) if n)
        session_set_status(session, S.ACTIVE, f"moved to backend {backend_id} ({notes})")
    return queued


def session_start_finish(*, session_id: str, status: str, epoch: int, backend_id: str, cwd: str) -> list[dict]:
    """Mark up a shell the reconcile found whose start (``initializing``) or move (``migrating``)
    was not marked done; its queued commands to run, oldest first. Nothing when that start got
    there first (the session is no longer in ``status``) or the placement moved on."""
    if status == S.INITIALIZING:
        return session_started(session_id=session_id, epoch=epoch, cwd=cwd, initializing_only=True) or []
    return session_resumed(session_id=session_id, epoch=epoch, backend_id=backend_id, cwd=cwd) or []


def session_resume_failed(*, session_id: str, epoch: int, backend_id: str, error: str) -> None:
    """The new backend could not rebuild the shell: count it against that backend, try another."""
    breaker_record_failure(backend_id)
    session = TerminalSession.objects.filter(pk=session_id, epoch=epoch, backend_id=backend_id).first()
    if session is not None:
        session_migrate(session, reason=f"backend {backend_id} could not rebuild the shell ({error})",
                        exclude=(backend_id,))


def session_placed_here(*, session_id: str, epoch: int, backend_id: str) -> bool:
    """Whether ``backend_id`` holds the session's current placement (same epoch)."""
    return TerminalSession.objects.filter(pk=session_id, epoch=epoch, backend_id=backend_id).exists()


# -- backends -------------------------------------------------------------------------------


def backend_live_sessions(backend_id: str) -> list[TerminalSession]:
    return list(TerminalSession.objects.filter(backend_id=backend_id, status__in=TerminalSession.LIVE)
                .order_by("created_at"))


def backend_mark_dead(backend: Backend, reason: str) -> int:
    """Declare ``backend`` dead and move its sessions. Returns how many were moved or lost."""
    Backend.objects.filter(pk=backend.pk).update(status=Backend.Status.DEAD)
    backend.status = Backend.Status.DEAD
    log.warning("backend %s is dead: %s", backend.pk, reason)
    moved = 0
    for session in backend_live_sessions(backend.pk):
        session_migrate(session, reason=f"backend {backend.pk} was lost ({reason})", exclude=(backend.pk,))
        moved += 1
    # Sessions it was asked to end: nobody will answer for them now.
    for session in TerminalSession.objects.filter(backend_id=backend.pk, status=S.TERMINATING):
        session_set_status(session, S.TERMINATED, session.status_reason or f"backend {backend.pk} was lost")
        _commands_end(session.pk, [Command.Status.QUEUED, Command.Status.RUNNING], "the session ended")
    return moved


def backend_mark_draining(backend_id: str) -> None:
    Backend.objects.filter(pk=backend_id).update(status=Backend.Status.DRAINING)


def backend_drain(backend: Backend, *, by: str = "") -> Backend:
    """Stop placing sessions on ``backend`` and move its sessions elsewhere, live.

    A backend that answers moves them itself (capturing each shell's cwd, letting running
    commands finish for up to DRAIN_GRACE seconds); a silent one has them moved from here.
    """
    Backend.objects.filter(pk=backend.pk).update(status=Backend.Status.DRAINING)
    backend.status = Backend.Status.DRAINING
    reason = f"backend {backend.pk} is draining" + (f" ({by})" if by else "")
    alive = backend.last_heartbeat is not None and backend.last_heartbeat >= backends_alive_cutoff()
    if alive:
        send_to_backend(backend.queue, T + "backend_drain", reason)
    else:
        for session in backend_live_sessions(backend.pk):
            session_migrate(session, reason=reason, exclude=(backend.pk,))
    return backend


# -- what a backend finds when it (re)starts, or periodically -------------------------------


@dataclass
class ShellState:
    """What a backend reports about one of its shells (from the tmux driver's ShellInfo)."""

    name: str
    epoch: int
    busy: bool
    last_command: str = ""
    cwd: str = ""


@dataclass
class ReconcilePlan:
    """What the backend must do to its shells so that they match the database."""

    kill: list[str] = field(default_factory=list)  # shells of sessions that moved or ended
    # (shell, command id, started, its timeout, its idle timeout)
    adopt: list[tuple[str, str, float | None, float | None, float | None]] = field(default_factory=list)
    run: list[tuple[str, dict]] = field(default_factory=list)  # (shell, command) to queue, in order
    # Shells up whose start or move was not marked done: (shell, status, epoch, cwd). The backend
    # finishes each under the session's lock (session_start_finish), so that a start still under
    # way here and the inbox keep the session's commands in order and run each once.
    finish: list[tuple[str, str, int, str]] = field(default_factory=list)
    migrated: list[str] = field(default_factory=list)  # live records with no shell here: moved


WORKER_DOWN = "its backend worker was down when it ended; its result was not captured"


def backend_reconcile_shells(*, backend_id: str, shells: list[ShellState], restarted: bool,
                             recently_exited: set[str] = frozenset(), gone_reason: str = "") -> ReconcilePlan:
    """Match a backend's shells with the database.

    A shell whose session is not live here at the same epoch is killed (it moved, or
    ended). A live session here with no shell is moved (its shell died with the tmux
    server). After a worker restart (``restarted``), each adopted shell's commands are
    settled: the one still running is adopted, ones that ended unseen are interrupted,
    queued ones are queued again in order.
    """
    plan = ReconcilePlan()
    records = {str(s.pk): s for s in TerminalSession.objects.filter(
        backend_id=backend_id, status__in=(*TerminalSession.LIVE, S.TERMINATING))}
    for sh in shells:
        session = records.get(sh.name)
        if session is None or session.status == S.TERMINATING or (sh.epoch and sh.epoch != session.epoch):
            plan.kill.append(sh.name)
            continue
        if session.status in (S.INITIALIZING, S.MIGRATING):
            # Its session_start has not marked it up (yet, or it never will: a worker restarted
            # meanwhile); the commands sent meanwhile wait in the database.
            plan.finish.append((sh.name, session.status, session.epoch, sh.cwd))
            continue
        if restarted:
            _settle_commands(session, sh, plan)
    shell_names = {sh.name for sh in shells}
    for sid, session in records.items():
        if sid in shell_names or sid in recently_exited or session.status not in (S.ACTIVE, S.IDLE):
            continue  # initializing / migrating ones wait for their session_start (or time out)
        session_migrate(session, reason=gone_reason or f"its shell was gone from backend {backend_id}")
        plan.migrated.append(sid)
    return plan


def _settle_commands(session: TerminalSession, sh: ShellState, plan: ReconcilePlan) -> None:
    unfinished = list(Command.objects.filter(session=session).exclude(status__in=Command.FINAL).order_by("seq"))
    last = next((c for c in unfinished if str(c.pk) == sh.last_command), None)
    for cmd in unfinished:
        if last is not None and cmd.seq < last.seq:
            _command_end(cmd, WORKER_DOWN)
        elif cmd is last:
            if sh.busy:
                if cmd.status == Command.Status.QUEUED:
                    Command.objects.filter(pk=cmd.pk).update(status=Command.Status.RUNNING,
                                                             started_at=timezone.now())
                started = cmd.started_at.timestamp() if cmd.started_at else None
                plan.adopt.append((sh.name, str(cmd.pk), started, cmd.timeout, cmd.idle_timeout))
            else:
                _command_end(cmd, WORKER_DOWN)
        elif cmd.status == Command.Status.RUNNING:
            _command_end(cmd, WORKER_DOWN)
        else:
            plan.run.append((sh.name, command_run_spec(vars(cmd))))


HANDOFF_LOST = ("its hand-off to backend {backend} was lost (Redis failed over before replicating it) "
                "and a later command of the session already ran: it was not run, to keep the order")


def sessions_with_unreceived_commands(*, backend_id: str, received: Callable[[str], bool]) -> list[str]:
    """Active sessions here with a command still ``queued`` after HANDOFF_GRACE seconds that this
    backend never received: its hand-off (an RPUSH on the inbox) may have been lost with a Redis
    primary that died before replicating it (docs/failover.md, "What a 201 means")."""
    cutoff = timezone.now() - timedelta(seconds=settings.VTERM["HANDOFF_GRACE"])
    queued = Command.objects.filter(status=Command.Status.QUEUED, submitted_at__lt=cutoff,
                                    session__backend_id=backend_id, session__status__in=(S.ACTIVE, S.IDLE))
    return sorted({str(sid) for cid, sid in queued.values_list("pk", "session_id") if not received(str(cid))})


def session_handoffs_lost(*, session_id: str, backend_id: str, received: Callable[[str], bool]) -> list[dict]:
    """Under the session's lock on its backend: the commands whose hand-off was lost, to run now,
    oldest first. One that a later command has overtaken ends ``interrupted`` instead (running it
    late would run the session's commands out of order)."""
    cutoff = timezone.now() - timedelta(seconds=settings.VTERM["HANDOFF_GRACE"])
    if not TerminalSession.objects.filter(pk=session_id, backend_id=backend_id,
                                          status__in=(S.ACTIVE, S.IDLE)).exists():
        return []
    unfinished = list(Command.objects.filter(session_id=session_id).exclude(status__in=Command.FINAL)
                      .order_by("seq").values(*COMMAND_RUN_FIELDS, "seq", "status", "submitted_at"))
    # The latest command that reached the shell: started in the database, or received here.
    started = (Command.objects.filter(session_id=session_id, started_at__isnull=False)
               .aggregate(m=Max("seq"))["m"] or 0)
    reached = max([started, *(c["seq"] for c in unfinished if received(str(c["id"])))])
    run = []
    for c in unfinished:
        if c["status"] != Command.Status.QUEUED or received(str(c["id"])) or c["submitted_at"] >= cutoff:
            continue
        if c["seq"] < reached:
            _command_end(Command(pk=c["id"]), HANDOFF_LOST.format(backend=backend_id))
            log.warning("command %s of %s: hand-off lost and overtaken; ended", c["id"], session_id)
            continue
        run.append(command_run_spec(c))
        log.warning("command %s of %s: hand-off lost (Redis failover?); running it from the database",
                    c["id"], session_id)
    return run


def _command_end(cmd: Command, reason: str) -> None:
    if Command.objects.filter(pk=cmd.pk).exclude(status__in=Command.FINAL).update(
            status=Command.Status.INTERRUPTED, reason=reason, finished_at=timezone.now()):
        webhooks.deliveries_begin(Command.objects.filter(pk=cmd.pk))


# -- the periodic reconcile (Celery beat) ---------------------------------------------------


def pool_reconcile() -> dict:
    """Dead backends, stuck moves, idle sessions. One run at a time across the pool."""
    cfg = settings.VTERM
    lock = sync_client().lock(reconcile_lock_key(), timeout=max(10, int(cfg["RECONCILE_INTERVAL"] * 5)))
    if not lock.acquire(blocking=False):
        return {"skipped": "another reconcile is running"}
    try:
        if _pool_just_started():
            return {"skipped": "the pool is starting: backends get VTERM_POOL_START_GRACE to come back"}
        return {"dead": _reconcile_dead(), "stuck": _reconcile_stuck(), "idle": _reconcile_idle(),
                "orphans_checked_on": _reconcile_orphans()}
    finally:
        try:
            lock.release()
        except LockError:
            pass


def _pool_just_started() -> bool:
    """True for VTERM_POOL_START_GRACE after the reconcile had stopped running (the whole pool was
    down, as in a `make run` restart): every backend's heartbeat is stale then, and each must
    get the time to come back and adopt its shells before it is declared dead."""
    cfg = settings.VTERM
    r = sync_client()
    now = time.time()
    last = r.getset(reconcile_last_key(), now)
    if last is None or now - float(last) > max(3 * cfg["RECONCILE_INTERVAL"], cfg["HEARTBEAT_TTL"]):
        grace = max(cfg["HEARTBEAT_TTL"], cfg["POOL_START_GRACE"])
        r.set(reconcile_grace_key(), 1, ex=max(1, int(grace)))
        log.info("pool reconcile (re)started: no backend is declared dead for %g s", grace)
    return bool(r.exists(reconcile_grace_key()))


def _reconcile_dead() -> list[str]:
    cutoff = backends_alive_cutoff()
    dead = []
    stale = Backend.objects.filter(status__in=(Backend.Status.HEALTHY, Backend.Status.DRAINING)).filter(
        last_heartbeat__lt=cutoff)
    for backend in stale:
        age = (timezone.now() - backend.last_heartbeat).total_seconds()
        backend_mark_dead(backend, f"no heartbeat for {age:.0f} s")
        dead.append(backend.pk)
    # Leftovers: live sessions still on a dead backend (e.g. placed there in a race).
    for session in TerminalSession.objects.filter(backend__status=Backend.Status.DEAD,
                                                  status__in=TerminalSession.LIVE).exclude(status=S.MIGRATING):
        session_migrate(session, reason=f"backend {session.backend_id} is dead", exclude=(session.backend_id,))
    return dead


def _reconcile_stuck() -> list[str]:
    """Sessions whose start or move did not finish in MIGRATE_TIMEOUT: try another backend."""
    cutoff = timezone.now() - timedelta(seconds=settings.VTERM["MIGRATE_TIMEOUT"])
    waiting = TerminalSession.objects.filter(status__in=(S.MIGRATING, S.INITIALIZING)).annotate(
        changed=Max("events__at")).filter(changed__lt=cutoff)
    stuck = []
    for session in waiting:
        session_migrate(session, reason=f"backend {session.backend_id} did not start the shell in time",
                        exclude=(session.backend_id,) if session.backend_id else ())
        stuck.append(str(session.pk))
    return stuck


def _reconcile_idle() -> list[str]:
    ttl = settings.VTERM["SESSION_IDLE_TTL"]
    if ttl <= 0:
        return []
    from .services import session_terminate

    cutoff = timezone.now() - timedelta(seconds=ttl)
    busy = Command.objects.exclude(status__in=Command.FINAL).values("session_id")
    ended = []
    for session in (TerminalSession.objects.filter(status__in=(S.ACTIVE, S.IDLE), last_activity__lt=cutoff)
                    .exclude(pk__in=busy).select_related("backend")):
        session_terminate(session, reason=f"idle for more than {ttl:g} s")
        ended.append(str(session.pk))
    return ended


def _reconcile_orphans() -> list[str]:
    """Every ORPHAN_INTERVAL, each live backend compares its shells with the database."""
    if not sync_client().set(orphans_throttle_key(), 1, nx=True, ex=max(1, int(settings.VTERM["ORPHAN_INTERVAL"]))):
        return []
    asked = []
    for backend in Backend.objects.filter(status=Backend.Status.HEALTHY, last_heartbeat__gte=backends_alive_cutoff()):
        send_to_backend(backend.queue, T + "backend_reconcile")
        asked.append(backend.pk)
    return asked
