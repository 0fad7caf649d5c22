"""A backend's inbox: the hot calls (run a command, keystrokes, Ctrl-C, resize, screen) on a Redis list.

Celery carried these before; per call it cost a kombu publish on the web, a receive,
an ack (MULTI) and a task dispatch on the worker: most of a command's CPU once the
shell had answered (docs/bench.md). Here the web RPUSHes one JSON message to the
backend's own list and one thread BLPOPs it: one Redis round trip each way, in order.

The list is one for all the backend's sessions, so the reader only sorts it: each message
goes to its session's queue here, and INBOX_THREADS threads serve the sessions in turn, one
message of a session at a time (its order kept). One session's flood of keystrokes then
delays another session's command by one message at most, not by the whole backlog (issue 14:
bob's 64 KB input frames had alice's `echo hi` wait 26 s). A session holding more than
VTERM_INBOX_SESSION_MAX_CHARS of keystrokes not yet typed loses the newer ones (logged); the
owner's byte budget (sessions/ratelimit.py) refuses such floods at the door long before.

Nothing acknowledged is lost by taking a message off the list before it is handled:
the database keeps a command ``queued`` until its shell starts it, and a restarted or
new backend queues it again from there (workers/failover_runtime.py). Keystrokes are
no more durable than a keyboard's: a backend that is down misses them.

The rarer calls (start, stop, drain, reconcile) stay Celery tasks. With
VTERM_HOT_CALLS=celery the hot ones are Celery tasks too (``workers.tasks.inbox_message``,
each visible in Flower), carried out by the same ``handle``, in the queue's order (not in turn);
measured in docs/bench.md.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from django.conf import settings
from redis.exceptions import RedisError

from sessions.redis_state import backend_inbox_key, sync_client
from sessions.replies import post_reply
from vterm_project import hop_trace

from . import failover_runtime
from .tmux.driver import ShellError

if TYPE_CHECKING:
    from .runtime_parts import RuntimeParts
    from .tmux.pool import TmuxPool

log = logging.getLogger(__name__)

POLL = 1.0  # seconds a BLPOP (or a serving thread) waits, so that a stopping backend notices within that
DROP_LOG_EVERY = 10.0  # seconds between warnings about one session's dropped keystrokes


def handle(parts: RuntimeParts, msg: dict) -> None:
    """Carry out one inbox message; a shell that is not here is logged, not raised."""
    op, session_id = msg.get("op"), msg.get("session")
    with parts.session_lock(session_id):
        _carry_out(parts, op, session_id, msg)


def screen_reply(driver: TmuxPool, session_id: str, escapes: bool) -> dict:
    """A session's screen as the web asked for it (services.session_screen)."""
    try:
        s = driver.screen(session_id, escapes=escapes)
    except ShellError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "screen": {"cols": s.cols, "rows": s.rows, "lines": s.lines,
                                   "cursor": {"x": s.cursor_x, "y": s.cursor_y}}}


def _carry_out(parts: RuntimeParts, op: str, session_id: str, msg: dict) -> None:
    if op == "run":
        if "seq" in msg:
            parts.remember_command(msg)
        failover_runtime.command_run(parts, session_id, msg["epoch"], msg)
        hop_trace.mark("worker.typed")
        return
    if op == "screen":
        post_reply(msg.get("reply_to"), screen_reply(parts.driver, session_id, bool(msg.get("escapes"))))
        return
    try:
        if op == "input":
            if msg.get("data") is not None:
                parts.driver.send_text(session_id, msg["data"])
                hop_trace.mark("worker.typed")
            if msg.get("keys"):
                parts.driver.send_keys(session_id, msg["keys"])
        elif op == "interrupt":
            parts.driver.interrupt(session_id, msg.get("command"))
        elif op == "resize":
            parts.driver.resize(session_id, msg["cols"], msg["rows"])
        else:
            log.warning("inbox: unknown message %r", msg)
    except ShellError:
        log.info("%s for %s: no such shell here", op, session_id)


class SessionQueues:
    """Messages by session: each session's in order and one at a time, the sessions in turn.

    A session is in ``_ready`` exactly when it has messages and no thread is serving it.
    """

    def __init__(self, max_input_chars: int) -> None:
        self.max_input_chars = max_input_chars
        self._cond = threading.Condition()
        self._queues: dict[str, deque[tuple[dict, int]]] = {}
        self._input_chars: dict[str, int] = {}
        self._ready: deque[str] = deque()
        self._serving: set[str] = set()
        self._dropped_logged: dict[str, float] = {}

    def put(self, msg: dict) -> bool:
        """Queue one message; False when it was keystrokes over the session's allowance (dropped)."""
        sid = str(msg.get("session") or "")
        size = len(msg.get("data") or "") if msg.get("op") == "input" else 0
        with self._cond:
            if size and self._input_chars.get(sid, 0) + size > self.max_input_chars:
                self._log_drop(sid)
                return False
            queue = self._queues.setdefault(sid, deque())
            queue.append((msg, size))
            if size:
                self._input_chars[sid] = self._input_chars.get(sid, 0) + size
            if len(queue) == 1 and sid not in self._serving:
                self._ready.append(sid)
                self._cond.notify()
        return True

    def take(self, timeout: float) -> tuple[str, dict] | None:
        """The next session's next message, now its thread's until ``done``; None after ``timeout``."""
        with self._cond:
            if not self._ready and not self._cond.wait_for(lambda: self._ready, timeout):
                return None
            sid = self._ready.popleft()
            self._serving.add(sid)
            msg, size = self._queues[sid].popleft()
            if size:
                self._input_chars[sid] -= size
            return sid, msg

    def done(self, sid: str) -> None:
        """The session's message was carried out: its next one (if any) waits for its turn."""
        with self._cond:
            self._serving.discard(sid)
            if self._queues.get(sid):
                self._ready.append(sid)
                self._cond.notify()
            else:
                self._queues.pop(sid, None)
                self._input_chars.pop(sid, None)

    def pending(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())

    def _log_drop(self, sid: str) -> None:
        now = time.monotonic()
        if now - self._dropped_logged.get(sid, 0.0) >= DROP_LOG_EVERY:
            if len(self._dropped_logged) > 10_000:
                self._dropped_logged.clear()
            self._dropped_logged[sid] = now
            log.warning("inbox: session %s has %d characters of keystrokes not yet typed; newer ones are dropped",
                        sid, self._input_chars.get(sid, 0))


class InboxThread(threading.Thread):
    """Reads the backend's list into per-session queues, and starts the threads that serve them."""

    def __init__(self, parts: RuntimeParts, stop: threading.Event) -> None:
        super().__init__(name="vterm-inbox", daemon=True)
        self.parts, self.stop = parts, stop
        self.key = backend_inbox_key(parts.backend_id)
        self.queues = SessionQueues(settings.VTERM["INBOX_SESSION_MAX_CHARS"])

    def run(self) -> None:
        for n in range(max(1, settings.VTERM["INBOX_THREADS"])):
            threading.Thread(target=self._serve, name=f"vterm-inbox-{n}", daemon=True).start()
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
            hop_trace.mark("worker.taken")
            try:
                self.queues.put(json.loads(got[1]))
            except Exception:
                log.exception("inbox: unreadable message")

    def _serve(self) -> None:
        while not self.stop.is_set():
            taken = self.queues.take(POLL)
            if taken is None:
                continue
            sid, msg = taken
            hop_trace.mark("worker.served")
            try:
                handle(self.parts, msg)
            except Exception:
                log.exception("inbox: message failed")  # the next one is independent
            finally:
                self.queues.done(sid)
