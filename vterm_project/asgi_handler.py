"""Django's ASGI handler, minus a new thread for every request.

Django runs each request in its own ``ThreadSensitiveContext``: every sync step of
the request (sync middleware, DRF's authentication, the ORM) goes to a thread made
for that request and dropped after it. Everything that lives in thread-locals is
then rebuilt per request: a new database connection (for SQLite: open plus its
PRAGMAs), Celery's result backend and kombu's Redis client. Measured with
``manage.py vterm_bench`` and py-spy (docs/bench.md), that was the largest share of
the web's CPU per command. Without the per-request context, sync steps run on
asgiref's one long-lived sync thread, where those connections persist.

The cost: sync steps of concurrent requests queue on that one thread. vterm's views
are async and their sync steps are short database operations (the GIL would
serialise most of them anyway); nothing slow may run there.
"""

from __future__ import annotations

from django.core.handlers.asgi import ASGIHandler


class SharedSyncThreadASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)
