"""The backend's side of fault tolerance: adopt and reconcile shells, resume moved sessions, move them away.

These act on a backend's ``RuntimeParts`` (workers/runtime_parts.py) and leave the decisions to
``sessions.failover``: the database says which shells should exist here and at which
epoch; this module makes tmux match it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings

from sessions import failover, services

from .tmux.driver import ShellError, ShellInfo

if TYPE_CHECKING:
    from .command_ledger import CommandLedger
    from .runtime_parts import RuntimeParts
    from .sandbox import SandboxSpec
    from .tmux.pool import TmuxPool

log = logging.getLogger(__name__)


def _states(driver: TmuxPool, ledger: CommandLedger, infos: list[ShellInfo] | None = None,
            ) -> list[failover.ShellState]:
    if infos is None:
        infos = []
        for name in driver.shell_names():
            try:
                infos.append(driver.shell_info(name))
            except ShellError:
                continue
    return [failover.ShellState(name=i.name, epoch=i.epoch or ledger.epochs.get(i.name, 0), busy=i.busy,
                                last_command=i.last_command, cwd=i.cwd) for i in infos]


def reconcile(parts: RuntimeParts, *, restarted: bool, adopted: list[ShellInfo] | None = None,
              gone_reason: str = "") -> failover.ReconcilePlan:
    """Make this backend's shells match the database (at start, periodically, when told it was dead)."""
    parts.flush_writes()
    plan = failover.backend_reconcile_shells(backend_id=parts.backend_id,
                                             shells=_states(parts.driver, parts.ledger, adopted),
                                             restarted=restarted,
                                             recently_exited=parts.ledger.recently_exited(),
                                             gone_reason=gone_reason)
    for info in adopted or []:
        parts.ledger.epochs[info.name] = info.epoch
    for name in plan.kill:
        log.info("killing shell %s: its session moved or ended", name)
        stop_shell(parts.driver, parts.ledger, name, "the session moved to another backend")
    for name, command_id, started, timeout, idle_timeout in plan.adopt:
        parts.ledger.claim(command_id)
        parts.driver.adopt_command(name, command_id, started, timeout=timeout, idle_timeout=idle_timeout)
    for name, cmd in plan.run:
        queue_command(parts.driver, parts.ledger, name, cmd, from_database=True)
    for name, status, epoch, cwd in plan.finish:
        # Under the session's lock: a session_start still under way here finishes first (and this
        # then finds nothing to do), and inbox commands wait until the queued ones are given.
        with parts.session_lock(name):
            for cmd in failover.session_start_finish(session_id=name, status=status, epoch=epoch,
                                                     backend_id=parts.backend_id, cwd=cwd):
                queue_command(parts.driver, parts.ledger, name, cmd, from_database=True)
    if plan.kill or plan.adopt or plan.run or plan.migrated or plan.finish:
        log.info("backend %s reconciled: %d killed, %d adopted, %d queued again, %d moved, %d marked up",
                 parts.backend_id, len(plan.kill), len(plan.adopt), len(plan.run), len(plan.migrated),
                 len(plan.finish))
    return plan


def stop_shell(driver: TmuxPool, ledger: CommandLedger, name: str, reason: str) -> None:
    """End a local copy of a session that lives elsewhere now: its queued commands are not
    ended here (they run where the session went)."""
    try:
        driver.drop_queued(name)
    except ShellError:
        return
    # Killed before the ledger forgets its epoch: its exit is then written with the stale copy's own
    # epoch and fenced. Forgotten first, the exit carried no epoch and ended the session when it had
    # just been placed here again (the orphan sweeps of two backends at once, a move back).
    driver.kill_shell(name, reason)
    ledger.exited(name)


def queue_command(driver: TmuxPool, ledger: CommandLedger, name: str, cmd: dict, *,
                  from_database: bool = False) -> None:
    """Give a command (services.command_run_spec) to its shell once. ``from_database``: the database
    says it is still queued for a shell rebuilt or adopted here, so it runs even if an earlier copy
    was taken (and lost with the old shell); a task delivered later for it is still dropped."""
    if ledger.claim(cmd["id"]) or from_database:
        driver.run(name, cmd["id"], cmd["command"], cmd.get("timeout"), idle_timeout=cmd.get("idle_timeout"))


def command_run(parts: RuntimeParts, session_id: str, epoch: int, cmd: dict) -> None:
    """A command from the inbox (its message: services.command_run_spec's keys): refused when stale
    (fencing), dropped when already seen."""
    command_id = cmd["id"]
    current = parts.ledger.epochs.get(session_id)
    if current is not None and epoch < current:
        log.info("command %s: stale epoch %d < %d, refused", command_id, epoch, current)
        return
    try:
        queue_command(parts.driver, parts.ledger, session_id, cmd)
    except ShellError as exc:
        if failover.session_placed_here(session_id=session_id, epoch=epoch, backend_id=parts.backend_id):
            parts.command_lost(session_id, command_id, str(exc))
        else:
            log.info("command %s: session %s is not placed here (epoch %d): left to its backend",
                     command_id, session_id, epoch)


def session_resume(parts: RuntimeParts, session_id: str, epoch: int, cwd: str, env: dict, cols: int,
                   rows: int, *, sandbox_spec: Callable[[str], SandboxSpec | None],
                   forget_output_seq: Callable[[str], None]) -> dict:
    """Rebuild a moved session's shell here, then run its queued commands in order. ``sandbox_spec``:
    what its shell runs as (BackendRuntime.sandbox_spec); ``forget_output_seq``: its output stream
    grew elsewhere, its numbering is read again."""
    note = ""
    if session_id in parts.driver.shell_names():
        stop_shell(parts.driver, parts.ledger, session_id, "replaced by a newer placement")
    try:
        # Up-arrow in the moved shell finds what ran before the move (a nicety: never a reason not to move).
        history = failover.session_history(session_id)
    except Exception:
        log.warning("could not read the history of %s", session_id, exc_info=True)
        history = []
    try:
        spec = sandbox_spec(session_id)
        try:
            info = parts.driver.create_shell(session_id, cwd=cwd, env=env, cols=cols, rows=rows, epoch=epoch,
                                          history=history, sandbox=spec)
        except ShellError as exc:
            if not str(exc).startswith("cwd:"):
                raise
            # Its directory is not here (another machine's disk): the user's home instead.
            info = parts.driver.create_shell(session_id, cwd="", env=env, cols=cols, rows=rows, epoch=epoch,
                                          history=history, sandbox=spec)
            note = f"{cwd or 'its directory'} does not exist here; started in {info.cwd}"
    except ShellError as exc:
        failover.session_resume_failed(session_id=session_id, epoch=epoch, backend_id=parts.backend_id, error=str(exc))
        return {"ok": False, "error": str(exc)}
    parts.ledger.epochs[session_id] = epoch
    forget_output_seq(session_id)
    queued = failover.session_resumed(session_id=session_id, epoch=epoch, backend_id=parts.backend_id,
                                      cwd=info.cwd, note=note)
    if queued is None:
        stop_shell(parts.driver, parts.ledger, session_id, "the session was placed elsewhere meanwhile")
        return {"ok": False, "error": "the session was placed elsewhere meanwhile"}
    for cmd in queued:
        queue_command(parts.driver, parts.ledger, session_id, cmd, from_database=True)
    return {"ok": True, "cwd": info.cwd}


def drain(parts: RuntimeParts, reason: str) -> int:
    """Move every session of this backend elsewhere, live; returns how many.

    New work stops first (the backend is ``draining``, shells' queues are emptied: those
    commands run where the session goes); running commands get DRAIN_GRACE seconds to end;
    then each session moves with the cwd and the exported environment its shell has now (read
    from the idle ones; a shell still busy moves with the last environment read), and the
    local shell is ended.
    """
    failover.backend_mark_draining(parts.backend_id)
    names = parts.driver.shell_names()
    for name in names:
        try:
            parts.driver.drop_queued(name)
        except ShellError:
            pass
    deadline = time.monotonic() + settings.VTERM["DRAIN_GRACE"]
    while time.monotonic() < deadline and any(_busy(parts.driver, n) for n in names):
        time.sleep(0.05)
    parts.flush_writes()  # commands that ended are in the database before the move
    sessions = failover.backend_live_sessions(parts.backend_id)
    try:
        envs = parts.driver.capture_env([str(s.pk) for s in sessions if str(s.pk) in names])
    except Exception:
        log.warning("could not read the shells' environments", exc_info=True)
        envs = {}
    for session in sessions:
        name = str(session.pk)
        cwd = None
        if name in names:
            try:
                cwd = parts.driver.current_cwd(name)
            except Exception:
                log.warning("could not read the cwd of %s", name, exc_info=True)
        failover.session_migrate(session, reason=reason, cwd=cwd, env=envs.get(name), exclude=(parts.backend_id,))
    for name in names:
        stop_shell(parts.driver, parts.ledger, name, f"{reason}: the session moved to another backend")
    parts.flush_writes()
    log.info("backend %s drained: %d session(s) moved", parts.backend_id, len(sessions))
    return len(sessions)


def _busy(driver: TmuxPool, name: str) -> bool:
    try:
        return driver.shell_info(name).busy
    except ShellError:
        return False


def on_declared_dead(parts: RuntimeParts) -> None:
    """The pool declared this backend dead (it was paused or cut off): its sessions may have
    moved. Kill the stale copies, then come back as healthy."""
    log.warning("backend %s was declared dead: reconciling before taking work again", parts.backend_id)
    reconcile(parts, restarted=False)
    services.backend_register(backend_id=parts.backend_id, hostname=socket.gethostname(),
                              capacity=settings.VTERM["BACKEND_CAPACITY"])
