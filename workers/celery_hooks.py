"""Worker boot: a worker started with VTERM_BACKEND_ID (or as a backend) becomes a backend.

It adds its own queue (named from its identity by workers.routing) and starts the
backend runtime; on shutdown it detaches from tmux, leaving the shells running.
"""

from __future__ import annotations

import os

from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown

from .routing import backend_queue, local_backend_id


def _is_backend() -> bool:
    return os.environ.get("VTERM_ROLE", "backend") == "backend"


@celeryd_after_setup.connect
def add_backend_queue(sender, instance, **kwargs):
    if _is_backend():
        instance.app.amqp.queues.select_add(backend_queue(local_backend_id()))


@worker_ready.connect
def start_backend(sender=None, **kwargs):
    if _is_backend():
        from .backend import runtime_start

        runtime_start()


@worker_shutdown.connect
def stop_backend(sender=None, **kwargs):
    if _is_backend():
        from .backend import runtime_stop

        runtime_stop()
