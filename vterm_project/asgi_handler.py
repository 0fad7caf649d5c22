"""Django's ASGI handler, minus a new thread for every request.

Django runs each request in its own ``ThreadSensitiveContext``: every sync step of
the request (sync middleware, DRF's authentication, the ORM) goes to a thread made
for that request and dropped after it. Everything that lives in thread-locals is
then rebuilt per request: a new database connection (for SQLite: open plus its
PRAGMAs), Celery's result backend and kombu's Redis client. Measured with
``manage.py vterm_bench`` and py-spy (docs/bench.md), that was a large share of the
web's CPU per command.

Here each request gets one of a fixed set of long-lived contexts instead (the one
with the fewest requests in flight), so its sync steps run on a thread that lives
on, with its connections. Several threads, not one: a request whose sync step waits
(on a SQLite lock, on Redis) must not hold up every other request; with a single
shared thread, 1000 sessions' requests queued behind each other until they timed out.
"""

from __future__ import annotations

import os

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.core.handlers.asgi import ASGIHandler


class PooledSyncThreadASGIHandler(ASGIHandler):
    def __init__(self, threads: int | None = None) -> None:
        super().__init__()
        n = threads or int(os.environ.get("VTERM_WEB_SYNC_THREADS", "8"))
        # Never exited: each keeps its one-thread executor (asgiref makes it on first use).
        self._contexts = [ThreadSensitiveContext() for _ in range(max(1, n))]
        self._in_flight = [0] * len(self._contexts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        i = min(range(len(self._contexts)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        token = SyncToAsync.thread_sensitive_context.set(self._contexts[i])
        try:
            await self.handle(scope, receive, send)
        finally:
            SyncToAsync.thread_sensitive_context.reset(token)
            self._in_flight[i] -= 1
