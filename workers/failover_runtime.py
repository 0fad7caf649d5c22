"""The backend's side of fault tolerance: adopt and reconcile shells, move sessions away, recover.

These act on a ``BackendRuntime`` (workers/backend.py) and leave the decisions to
``sessions.failover``: the database says which shells should exist here and at which
epoch; this module makes tmux match it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections

from sessions import failover, services

from .tmux.driver import ShellError, ShellInfo

if TYPE_CHECKING:
    from .backend import BackendRuntime

log = logging.getLogger(__name__)

SEEN_MAX = 100_000  # command ids remembered, to drop a task delivered twice
EXITED_KEEP = 60.0  # seconds a shell that exited by itself is not taken for one that vanished


class CommandLedger:
    """Which command ids this backend has already queued, and which shells just exited."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._exited: dict[str, float] = {}
        self.epochs: dict[str, int] = {}  # shell name -> the placement epoch it was made for

    def claim(self, command_id: str) -> bool:
        """True the first time a command id is seen here."""
        with self._lock:
            if command_id in self._seen:
                return False
            self._seen[command_id] = None
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return True

    def received(self, command_id: str) -> bool:
        """Whether this backend was given the command (workers/handoff_check.py)."""
        with self._lock:
            return command_id in self._seen

    def exited(self, name: str) -> None:
        with self._lock:
            self._exited[name] = time.monotonic()
            self.epochs.pop(name, None)

    def recently_exited(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            self._exited = {n: t for n, t in self._exited.items() if now - t < EXITED_KEEP}
            return set(self._exited)


def _states(rt: BackendRuntime, infos: list[ShellInfo] | None = None) -> list[failover.ShellState]:
    if infos is None:
        infos = []
        for name in rt.driver.shell_names():
            try:
                infos.append(rt.driver.shell_info(name))
            except ShellError:
                continue
    return [failover.ShellState(name=i.name, epoch=i.epoch or rt.ledger.epochs.get(i.name, 0), busy=i.busy,
                                last_command=i.last_command, cwd=i.cwd) for i in infos]


def reconcile(rt: BackendRuntime, *, restarted: bool, adopted: list[ShellInfo] | None = None,
              gone_reason: str = "") -> failover.ReconcilePlan:
    """Make this backend's shells match the database (at start, periodically, when told it was dead)."""
    rt.flush_writes()
    plan = failover.backend_reconcile_shells(backend_id=rt.backend_id, shells=_states(rt, adopted),
                                             restarted=restarted, recently_exited=rt.ledger.recently_exited(),
                                             gone_reason=gone_reason)
    for info in adopted or []:
        rt.ledger.epochs[info.name] = info.epoch
    for name in plan.kill:
        log.info("killing shell %s: its session moved or ended", name)
        stop_shell(rt, name, "the session moved to another backend")
    for name, command_id, started, timeout, idle_timeout in plan.adopt:
        rt.ledger.claim(command_id)
        rt.driver.adopt_command(name, command_id, started, timeout=timeout, idle_timeout=idle_timeout)
    for name, cmd in plan.run:
        queue_command(rt, name, cmd, from_database=True)
    for name, status, epoch, cwd in plan.finish:
        # Under the session's lock: a session_start still under way here finishes first (and this
        # then finds nothing to do), and inbox commands wait until the queued ones are given.
        with rt.session_lock(name):
            for cmd in failover.session_start_finish(session_id=name, status=status, epoch=epoch,
                                                     backend_id=rt.backend_id, cwd=cwd):
                queue_command(rt, name, cmd, from_database=True)
    if plan.kill or plan.adopt or plan.run or plan.migrated or plan.finish:
        log.info("backend %s reconciled: %d killed, %d adopted, %d queued again, %d moved, %d marked up",
                 rt.backend_id, len(plan.kill), len(plan.adopt), len(plan.run), len(plan.migrated),
                 len(plan.finish))
    return plan


def stop_shell(rt: BackendRuntime, name: str, reason: str) -> None:
    """End a local copy of a session that lives elsewhere now: its queued commands are not
    ended here (they run where the session went)."""
    try:
        rt.driver.drop_queued(name)
    except ShellError:
        return
    # Killed before the ledger forgets its epoch: its exit is then written with the stale copy's own
    # epoch and fenced. Forgotten first, the exit carried no epoch and ended the session when it had
    # just been placed here again (the orphan sweeps of two backends at once, a move back).
    rt.driver.kill_shell(name, reason)
    rt.ledger.exited(name)


def queue_command(rt: BackendRuntime, name: str, cmd: dict, *, from_database: bool = False) -> None:
    """Give a command (services.command_run_spec) to its shell once. ``from_database``: the database
    says it is still queued for a shell rebuilt or adopted here, so it runs even if an earlier copy
    was taken (and lost with the old shell); a task delivered later for it is still dropped."""
    if rt.ledger.claim(cmd["id"]) or from_database:
        rt.driver.run(name, cmd["id"], cmd["command"], cmd.get("timeout"), idle_timeout=cmd.get("idle_timeout"))


def command_run(rt: BackendRuntime, session_id: str, epoch: int, cmd: dict) -> None:
    """A command from the inbox (its message: services.command_run_spec's keys): refused when stale
    (fencing), dropped when already seen."""
    command_id = cmd["id"]
    current = rt.ledger.epochs.get(session_id)
    if current is not None and epoch < current:
        log.info("command %s: stale epoch %d < %d, refused", command_id, epoch, current)
        return
    try:
        queue_command(rt, session_id, cmd)
    except ShellError as exc:
        if failover.session_placed_here(session_id=session_id, epoch=epoch, backend_id=rt.backend_id):
            rt.command_lost(session_id, command_id, str(exc))
        else:
            log.info("command %s: session %s is not placed here (epoch %d): left to its backend",
                     command_id, session_id, epoch)


def session_resume(rt: BackendRuntime, session_id: str, epoch: int, cwd: str, env: dict, cols: int,
                   rows: int) -> dict:
    """Rebuild a moved session's shell here, then run its queued commands in order."""
    note = ""
    if session_id in rt.driver.shell_names():
        stop_shell(rt, session_id, "replaced by a newer placement")
    try:
        # Up-arrow in the moved shell finds what ran before the move (a nicety: never a reason not to move).
        history = failover.session_history(session_id)
    except Exception:
        log.warning("could not read the history of %s", session_id, exc_info=True)
        history = []
    try:
        spec = rt.sandbox_spec(session_id)
        try:
            info = rt.driver.create_shell(session_id, cwd=cwd, env=env, cols=cols, rows=rows, epoch=epoch,
                                          history=history, sandbox=spec)
        except ShellError as exc:
            if not str(exc).startswith("cwd:"):
                raise
            # Its directory is not here (another machine's disk): the user's home instead.
            info = rt.driver.create_shell(session_id, cwd="", env=env, cols=cols, rows=rows, epoch=epoch,
                                          history=history, sandbox=spec)
            note = f"{cwd or 'its directory'} does not exist here; started in {info.cwd}"
    except ShellError as exc:
        failover.session_resume_failed(session_id=session_id, epoch=epoch, backend_id=rt.backend_id, error=str(exc))
        return {"ok": False, "error": str(exc)}
    rt.ledger.epochs[session_id] = epoch
    rt.forget_output_seq(session_id)
    queued = failover.session_resumed(session_id=session_id, epoch=epoch, backend_id=rt.backend_id,
                                      cwd=info.cwd, note=note)
    if queued is None:
        stop_shell(rt, session_id, "the session was placed elsewhere meanwhile")
        return {"ok": False, "error": "the session was placed elsewhere meanwhile"}
    for cmd in queued:
        queue_command(rt, session_id, cmd, from_database=True)
    return {"ok": True, "cwd": info.cwd}


def drain(rt: BackendRuntime, reason: str) -> int:
    """Move every session of this backend elsewhere, live; returns how many.

    New work stops first (the backend is ``draining``, shells' queues are emptied: those
    commands run where the session goes); running commands get DRAIN_GRACE seconds to end;
    then each session moves with the cwd and the exported environment its shell has now (read
    from the idle ones; a shell still busy moves with the last environment read), and the
    local shell is ended.
    """
    failover.backend_mark_draining(rt.backend_id)
    names = rt.driver.shell_names()
    for name in names:
        try:
            rt.driver.drop_queued(name)
        except ShellError:
            pass
    deadline = time.monotonic() + settings.VTERM["DRAIN_GRACE"]
    while time.monotonic() < deadline and any(_busy(rt, n) for n in names):
        time.sleep(0.05)
    rt.flush_writes()  # commands that ended are in the database before the move
    sessions = failover.backend_live_sessions(rt.backend_id)
    try:
        envs = rt.driver.capture_env([str(s.pk) for s in sessions if str(s.pk) in names])
    except Exception:
        log.warning("could not read the shells' environments", exc_info=True)
        envs = {}
    for session in sessions:
        name = str(session.pk)
        cwd = None
        if name in names:
            try:
                cwd = rt.driver.current_cwd(name)
            except Exception:
                log.warning("could not read the cwd of %s", name, exc_info=True)
        failover.session_migrate(session, reason=reason, cwd=cwd, env=envs.get(name), exclude=(rt.backend_id,))
    for name in names:
        stop_shell(rt, name, f"{reason}: the session moved to another backend")
    rt.flush_writes()
    log.info("backend %s drained: %d session(s) moved", rt.backend_id, len(sessions))
    return len(sessions)


def _busy(rt: BackendRuntime, name: str) -> bool:
    try:
        return rt.driver.shell_info(name).busy
    except ShellError:
        return False


def recover_tmux(rt: BackendRuntime) -> None:
    """The tmux server died under a live worker: start a new one, move the sessions it held.

    Runs on a thread of its own (the driver's reader thread reports the loss).
    """
    with rt.recover_lock:
        if rt.driver.alive or rt.stopping:
            return
        log.error("backend %s: tmux server lost; starting a new one", rt.backend_id)
        old = rt.driver
        try:
            old.close()
        except Exception:
            log.warning("closing the lost tmux connection failed", exc_info=True)
        for attempt in range(20):
            try:
                rt.driver = rt.make_driver()
                rt.driver.start()
                break
            except Exception:
                log.exception("tmux restart failed (attempt %d)", attempt + 1)
                time.sleep(0.5)
        else:
            # Heartbeating on without tmux, the backend would keep its sessions and run nothing.
            log.critical("backend %s: no tmux server could be started; the worker exits", rt.backend_id)
            rt.exit_worker()
            return
        rt.ledger.epochs.clear()
        close_old_connections()
        reconcile(rt, restarted=False, gone_reason=f"the tmux server of backend {rt.backend_id} died")


def on_declared_dead(rt: BackendRuntime) -> None:
    """The pool declared this backend dead (it was paused or cut off): its sessions may have
    moved. Kill the stale copies, then come back as healthy."""
    log.warning("backend %s was declared dead: reconciling before taking work again", rt.backend_id)
    reconcile(rt, restarted=False)
    services.backend_register(backend_id=rt.backend_id, hostname=socket.gethostname(),
                              capacity=settings.VTERM["BACKEND_CAPACITY"])
