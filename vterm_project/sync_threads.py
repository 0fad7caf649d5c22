"""The web process's one pool of threads for sync work (the ORM, Redis clients, Celery's publisher).

A fixed set of long-lived threads, each the executor of one asgiref
``ThreadSensitiveContext``: Django's handler (vterm_project/asgi_handler.py) runs all the
sync steps of a request on one of them, and the hot command route
(sessions/command_route.py) runs its database work there too. Long-lived, so each keeps
its thread-locals (its database connection: for SQLite, open plus its PRAGMAs; Celery's
and kombu's Redis clients) instead of rebuilding them per request. Several, so that a
request whose sync step waits (on a SQLite lock, on Redis) does not hold up the others;
each job goes to the thread with the fewest in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import SyncToAsync, ThreadSensitiveContext
from django.conf import settings


class SyncThreads:
    def __init__(self, threads: int) -> None:
        n = max(1, threads)
        self._contexts = [ThreadSensitiveContext() for _ in range(n)]
        self._executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"vterm-sync-{i}") for i in range(n)]
        for context, executor in zip(self._contexts, self._executors, strict=True):
            # asgiref runs a context's thread-sensitive calls on the executor it finds here.
            SyncToAsync.context_to_thread_executor[context] = executor
        self._in_flight = [0] * n

    @contextlib.contextmanager
    def _least_busy(self):
        i = min(range(len(self._in_flight)), key=self._in_flight.__getitem__)
        self._in_flight[i] += 1
        try:
            yield i
        finally:
            self._in_flight[i] -= 1

    @contextlib.asynccontextmanager
    async def context(self):
        """Within it, sync_to_async(thread_sensitive=True) calls go to one of the threads."""
        with self._least_busy() as i:
            token = SyncToAsync.thread_sensitive_context.set(self._contexts[i])
            try:
                yield
            finally:
                SyncToAsync.thread_sensitive_context.reset(token)

    async def run(self, fn, *args):
        """fn(*args) on one of the threads: a plain executor call (sync_to_async's copying of
        contextvars and asgiref's locals is not needed by the hot route's own functions)."""
        with self._least_busy() as i:
            return await asyncio.get_running_loop().run_in_executor(self._executors[i], fn, *args)


_pool: SyncThreads | None = None


def sync_threads() -> SyncThreads:
    """The process's pool, VTERM_WEB_SYNC_THREADS threads, made on first use (from the event loop)."""
    global _pool
    if _pool is None:
        _pool = SyncThreads(settings.VTERM["WEB_SYNC_THREADS"])
    return _pool
