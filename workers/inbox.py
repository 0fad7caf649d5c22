"""A backend's inbox: the hot calls (run a command, keystrokes, Ctrl-C, resize) on a Redis list.

Celery carried these before; per call it cost a kombu publish on the web, a receive,
an ack (MULTI) and a task dispatch on the worker: most of a command's CPU once the
shell had answered (docs/bench.md). Here the web RPUSHes one JSON message to the
backend's own list and one thread BLPOPs it: one Redis round trip each way, in order.

Nothing acknowledged is lost by taking a message off the list before it is handled:
the database keeps a command ``queued`` until its shell starts it, and a restarted or
new backend queues it again from there (workers/failover_runtime.py). Keystrokes are
no more durable than a keyboard's: a backend that is down misses them.

The rarer calls (start, stop, screen, drain, reconcile) stay Celery tasks. With
VTERM_HOT_CALLS=celery the hot ones are Celery tasks too (``workers.tasks.inbox_message``,
each visible in Flower), carried out by the same ``handle``; measured in docs/bench.md.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from sessions.redis_state import backend_inbox_key, sync_client

from . import failover_runtime
from .tmux.driver import ShellError

if TYPE_CHECKING:
    from .backend import BackendRuntime

log = logging.getLogger(__name__)

POLL = 1.0  # seconds a BLPOP waits, so that a stopping backend notices within that


def handle(rt: BackendRuntime, msg: dict) -> None:
    """Carry out one inbox message; a shell that is not here is logged, not raised."""
    op, session_id = msg.get("op"), msg.get("session")
    with rt.session_lock(session_id):
        _carry_out(rt, op, session_id, msg)


def _carry_out(rt: BackendRuntime, op: str, session_id: str, msg: dict) -> None:
    if op == "run":
        if "seq" in msg:
            rt.remember_command(msg)
        failover_runtime.command_run(rt, msg["id"], session_id, msg["epoch"], msg["command"], msg.get("timeout"))
        return
    try:
        if op == "input":
            if msg.get("data") is not None:
                rt.driver.send_text(session_id, msg["data"])
            if msg.get("keys"):
                rt.driver.send_keys(session_id, msg["keys"])
        elif op == "interrupt":
            rt.driver.interrupt(session_id, msg.get("command"))
        elif op == "resize":
            rt.driver.resize(session_id, msg["cols"], msg["rows"])
        else:
            log.warning("inbox: unknown message %r", msg)
    except ShellError:
        log.info("%s for %s: no such shell here", op, session_id)


class InboxThread(threading.Thread):
    def __init__(self, rt: BackendRuntime, stop: threading.Event) -> None:
        super().__init__(name="vterm-inbox", daemon=True)
        self.rt, self.stop = rt, stop
        self.key = backend_inbox_key(rt.backend_id)

    def run(self) -> None:
        r = sync_client()
        while not self.stop.is_set():
            try:
                got = r.blpop([self.key], timeout=POLL)
            except RedisError:
                log.warning("inbox: Redis unavailable; retrying", exc_info=True)
                self.stop.wait(0.5)
                continue
            if not got:
                continue
            try:
                handle(self.rt, json.loads(got[1]))
            except Exception:
                log.exception("inbox: message failed")  # the next one is independent
