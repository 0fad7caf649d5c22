"""Worker boot: a worker started with VTERM_BACKEND_ID (or as a backend) becomes a backend.

It adds its own queue (named from its identity by workers.routing) and starts the
backend runtime; on shutdown it detaches from tmux, leaving the shells running.
"""

from __future__ import annotations

import gc
import logging
import os
import time

from celery.exceptions import WorkerShutdown
from celery.signals import beat_embedded_init, celeryd_after_setup, worker_ready, worker_shutdown

from vterm_project.parent_death import die_with_parent

from .routing import MAINTENANCE_QUEUE, WEBHOOK_QUEUE, backend_queue, local_backend_id

log = logging.getLogger(__name__)

# A start that fails (tmux or the database not answering in time) is tried again before the
# worker gives up and exits.
START_ATTEMPTS = 3
START_RETRY_DELAY = 2.0  # seconds, times the attempt number


# The worker's pid, read in the worker before it forks its embedded beat (if any).
_WORKER_PID = os.getpid()


def _is_backend() -> bool:
    return os.environ.get("VTERM_ROLE", "backend") == "backend"


@celeryd_after_setup.connect
def add_backend_queue(sender, instance, **kwargs):
    if _is_backend():
        instance.app.amqp.queues.select_add(backend_queue(local_backend_id()))
    elif os.environ.get("VTERM_ROLE") == "control":
        instance.app.amqp.queues.select_add(MAINTENANCE_QUEUE)
        instance.app.amqp.queues.select_add(WEBHOOK_QUEUE)


@beat_embedded_init.connect
def beat_ends_with_its_worker(sender=None, **kwargs):
    """Beat embedded in the control worker (-B) is a child process of it: when the worker is
    killed (and started again by its supervisor) this beat must not run on beside the new one."""
    die_with_parent(_WORKER_PID)


@worker_ready.connect
def start_backend(sender=None, **kwargs):
    if _is_backend():
        from .backend import runtime_start

        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                runtime_start()
                break
            except Exception:
                log.exception("backend start failed (attempt %d of %d)", attempt, START_ATTEMPTS)
                if attempt == START_ATTEMPTS:
                    # A worker that is no backend must not stay up: its queue would fill unread.
                    # Exit code 1 for its supervisor: Kubernetes and `make run` (supervisord) restart it.
                    log.critical("backend could not start; the worker exits")
                    raise WorkerShutdown(1) from None
                time.sleep(START_RETRY_DELAY * attempt)
        gc.freeze()  # as the web does (vterm_project/asgi.py): what was loaded stays out of GC passes


@worker_shutdown.connect
def stop_backend(sender=None, **kwargs):
    if _is_backend():
        from django.conf import settings

        from .backend import _runtime, runtime_stop

        # VTERM_DRAIN_ON_STOP=1 (the Helm chart sets it): SIGTERM moves the sessions away first,
        # as when a pod is removed. Unset (make run, a plain restart): detach and leave the shells
        # running for the next worker to adopt.
        drained = None
        if settings.VTERM["DRAIN_ON_STOP"] and _runtime is not None:
            from .failover_runtime import drain

            try:
                drain(_runtime.parts, f"backend {_runtime.backend_id} is stopping")
                drained = _runtime.backend_id
            except Exception:
                log.exception("drain on stop failed; the pool's reconcile will move what is left")
        runtime_stop()
        if drained:
            # Stopped on purpose with nothing left on it (a scale-down): not a dead backend.
            from sessions.pool import backend_retire

            try:
                backend_retire(drained)
            except Exception:
                log.exception("could not retire backend %s", drained)
