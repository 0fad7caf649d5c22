"""/healthz (the process runs) and /readyz (database, Redis and a healthy backend answer)."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import JsonResponse

from .models import Backend
from .redis_state import async_client
from .services import backends_alive_cutoff


async def healthz(request):
    return JsonResponse({"status": "ok"})


def _database_and_backends() -> dict[str, str]:
    """Each healthy backend and how it isolates its shells."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return dict(Backend.objects.filter(status=Backend.Status.HEALTHY, last_heartbeat__gte=backends_alive_cutoff())
                .values_list("id", "sandbox"))


async def readyz(request):
    checks, failed = {}, []
    try:
        sandboxes = await sync_to_async(_database_and_backends)()
        checks["database"] = "ok"
        checks["backends"] = len(sandboxes)
        checks["sandbox"] = sandboxes
        if not sandboxes:
            failed.append("backends: no healthy backend")
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
