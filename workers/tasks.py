"""Celery tasks of a backend worker: thin, each hands its work to the backend runtime."""

from __future__ import annotations

import logging

from celery import shared_task

from sessions.replies import post_reply

from . import failover_runtime
from .backend import runtime
from .tmux.driver import ShellError

log = logging.getLogger(__name__)


@shared_task(name="workers.tasks.session_start")
def session_start(session_id, epoch, cwd, env, cols, rows, reply_to=None, resume=False):
    try:
        result = runtime().session_start(session_id, epoch, cwd, env, cols, rows, resume=resume)
    except ShellError as exc:
        field = "cwd" if str(exc).startswith("cwd:") else ""
        result = {"ok": False, "field": field, "error": str(exc).removeprefix("cwd: ")}
    post_reply(reply_to, result)


@shared_task(name="workers.tasks.session_stop")
def session_stop(session_id, reason=""):
    runtime().driver.kill_shell(session_id)


@shared_task(name="workers.tasks.command_run", bind=True)
def command_run(self, command_id, session_id, epoch, command, timeout=None):
    # Acked early on purpose: the database, not the broker, keeps a queued command
    # (a restarted or new backend queues it again from there; docs/failover.md).
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    failover_runtime.command_run(runtime(), command_id, session_id, epoch, command, timeout, redelivered)


@shared_task(name="workers.tasks.command_interrupt")
def command_interrupt(session_id, command_id=None):
    try:
        runtime().driver.interrupt(session_id, command_id)
    except ShellError:
        log.info("interrupt for %s: no such shell here", session_id)


@shared_task(name="workers.tasks.session_input")
def session_input(session_id, data=None, keys=None):
    try:
        if data is not None:
            runtime().driver.send_text(session_id, data)
        if keys:
            runtime().driver.send_keys(session_id, keys)
    except ShellError:
        log.info("input for %s: no such shell here", session_id)


@shared_task(name="workers.tasks.session_resize")
def session_resize(session_id, cols, rows):
    try:
        runtime().driver.resize(session_id, cols, rows)
    except ShellError:
        log.info("resize for %s: no such shell here", session_id)


@shared_task(name="workers.tasks.session_screen")
def session_screen(session_id, escapes=False, reply_to=None):
    try:
        s = runtime().driver.screen(session_id, escapes=escapes)
        result = {"ok": True, "screen": {"cols": s.cols, "rows": s.rows, "lines": s.lines,
                                         "cursor": {"x": s.cursor_x, "y": s.cursor_y}}}
    except ShellError as exc:
        result = {"ok": False, "error": str(exc)}
    post_reply(reply_to, result)


@shared_task(name="workers.tasks.pool_autoscale", ignore_result=True)
def pool_autoscale():
    """Celery beat: evaluate the pool and publish the autoscaler's decision (sessions/autoscaler.py)."""
    from sessions.autoscaler import autoscale_run

    autoscale_run()


@shared_task(name="workers.tasks.backend_drain")
def backend_drain(reason="drained"):
    failover_runtime.drain(runtime(), reason)


@shared_task(name="workers.tasks.backend_reconcile")
def backend_reconcile():
    """Periodic: kill shells with no live record here, move records whose shell is gone."""
    failover_runtime.reconcile(runtime(), restarted=False)


@shared_task(name="workers.tasks.pool_reconcile", ignore_result=True)
def pool_reconcile():
    """Celery beat: dead backends, stuck moves, idle sessions (sessions/failover.py)."""
    from sessions.failover import pool_reconcile as reconcile

    return reconcile()
