"""Django's ASGI handler, minus a new thread for every request.

Django runs each request in its own ``ThreadSensitiveContext``: every sync step of
the request (sync middleware, DRF's authentication, the ORM) goes to a thread made
for that request and dropped after it. Everything that lives in thread-locals is
then rebuilt per request: a new database connection (for SQLite: open plus its
PRAGMAs), Celery's result backend and kombu's Redis client. Measured with
``manage.py vterm_bench`` and py-spy (docs/bench.md), that was a large share of the
web's CPU per command.

Here each request's sync steps run on one of the process's long-lived threads instead
(vterm_project/sync_threads.py, the pool the hot command route uses too).
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler

from .sync_threads import sync_threads


class PooledSyncThreadASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        async with sync_threads().context():
            await self.handle(scope, receive, send)
