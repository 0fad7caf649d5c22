"""Celery tasks of a backend worker: thin, each hands its work to the backend runtime."""

from __future__ import annotations

import logging

from celery import shared_task

from sessions.replies import post_reply
from vterm_project import hop_trace

from . import failover_runtime, inbox
from .backend import runtime
from .start_failure import start_failure_reply
from .tmux.driver import ShellError

log = logging.getLogger(__name__)


@shared_task(name="workers.tasks.session_start")
def session_start(session_id, epoch, cwd, env, cols, rows, reply_to=None, resume=False, sandbox=None):
    hop_trace.mark("worker.start_task")
    rt = runtime()

    def start() -> None:
        # Every outcome is answered at once: a start that raised used to leave its caller waiting
        # for the whole start timeout, and be charged to this backend's circuit breaker.
        try:
            result = rt.session_start(session_id, epoch, cwd, env, cols, rows, resume=resume, sandbox=sandbox)
        except Exception as exc:  # answered, and so counted against the right one
            log.warning("session %s did not start: %s", session_id, exc, exc_info=not isinstance(exc, ShellError))
            result = start_failure_reply(exc, cwd=cwd, env=env or {})
        post_reply(reply_to, result)
    rt.driver.sandbox.warm()
    rt.start_in_background(start)


@shared_task(name="workers.tasks.session_stop")
def session_stop(session_id, reason=""):
    runtime().driver.kill_shell(session_id)


@shared_task(name="workers.tasks.job_start")
def job_start(job_id, reply_to=None):
    """Start a background job beside its session's shell (sessions/jobs.py); answered with its pid."""
    rt = runtime()
    rt.start_in_background(lambda: post_reply(reply_to, rt.jobs.start(job_id)))


@shared_task(name="workers.tasks.job_kill")
def job_kill(job_id):
    runtime().jobs.kill(job_id)


@shared_task(name="workers.tasks.inbox_message")
def inbox_message(msg):
    """A hot call sent through Celery (VTERM_HOT_CALLS=celery); by default they come on the inbox list."""
    inbox.handle(runtime().parts, msg)


@shared_task(name="workers.tasks.session_screen")
def session_screen(session_id, escapes=False, reply_to=None):
    """Screens come on the inbox now (workers/inbox.py); kept for web nodes of the version before."""
    post_reply(reply_to, inbox.screen_reply(runtime().driver, session_id, escapes))


@shared_task(name="workers.tasks.pool_autoscale", ignore_result=True)
def pool_autoscale():
    """Celery beat: evaluate the pool and publish the autoscaler's decision (sessions/autoscaler.py)."""
    from sessions.autoscaler import autoscale_run

    autoscale_run()


@shared_task(name="workers.tasks.backend_drain")
def backend_drain(reason="drained"):
    failover_runtime.drain(runtime().parts, reason)


@shared_task(name="workers.tasks.backend_reconcile")
def backend_reconcile():
    """Periodic: kill shells with no live record here, move records whose shell is gone."""
    failover_runtime.reconcile(runtime().parts, restarted=False)


@shared_task(name="workers.tasks.pool_reconcile", ignore_result=True)
def pool_reconcile():
    """Celery beat: dead backends, stuck moves, idle sessions (sessions/failover.py)."""
    from sessions.failover import pool_reconcile as reconcile

    return reconcile()


@shared_task(name="workers.tasks.retention_purge", ignore_result=True)
def retention_purge():
    """Celery beat, on the control worker's maintenance queue: delete what is past retention."""
    from sessions.retention import retention_purge as purge

    report = purge()
    return report.as_dict() if report is not None else None


@shared_task(name="workers.tasks.webhook_deliver", ignore_result=True)
def webhook_deliver(delivery_id, attempts):
    """On the control worker's webhooks queue: one POST of a completion webhook (sessions/webhooks.py)."""
    from sessions.webhooks import delivery_attempt

    return delivery_attempt(delivery_id, attempts)


@shared_task(name="workers.tasks.webhooks_due", ignore_result=True)
def webhooks_due():
    """Celery beat, on the webhooks queue: hand out the deliveries that are due (sessions/webhooks.py)."""
    from sessions.webhooks import deliveries_due

    return deliveries_due()
