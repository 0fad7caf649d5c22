"""/healthz (the process runs) and /readyz (database, Redis and a healthy backend answer)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import JsonResponse

from .models import Backend
from .pool import backends_alive_cutoff
from .redis_state import async_client


async def healthz(request):
    return JsonResponse({"status": "ok"})


def _database_and_backends() -> tuple[dict[str, str], list[str]]:
    """Each healthy backend and how it isolates its shells; and the backends that are down:
    declared dead, or healthy with a heartbeat older than the TTL (a crashed worker, one its
    supervisor gave up on)."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    cutoff = backends_alive_cutoff()
    healthy, down = {}, []
    for bid, status, beat, sandbox in Backend.objects.exclude(status=Backend.Status.DRAINING).values_list(
            "id", "status", "last_heartbeat", "sandbox").order_by("id"):
        if status == Backend.Status.HEALTHY and beat is not None and beat >= cutoff:
            healthy[bid] = sandbox
        else:
            down.append(bid)
    return healthy, down


async def readyz(request):
    checks, failed = {}, []
    try:
        sandboxes, down = await sync_to_async(_database_and_backends)()
        checks["database"] = "ok"
        checks["backends"] = len(sandboxes)
        checks["sandbox"] = sandboxes
        # Named, not failed: this web node serves while one backend is healthy (the pool moves
        # sessions off the others); operators and alerts see which are missing.
        checks["backends_down"] = down
        if not sandboxes:
            failed.append("backends: no healthy backend" + (f" ({', '.join(down)} down)" if down else ""))
    except Exception as exc:  # report, don't crash: this is what the probe is for
        checks["database"] = f"error: {exc.__class__.__name__}"
        failed.append("database")
    try:
        await async_client().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {exc.__class__.__name__}"
        failed.append("redis")
    body = {"status": "ok" if not failed else "unavailable", "checks": checks, "failed": failed}
    return JsonResponse(body, status=200 if not failed else 503)
