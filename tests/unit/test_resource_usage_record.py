"""A backend's round of resource figures is stored for its own live sessions only, every row of
it (more rows than one write batch), against the test database."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions import services
from sessions.models import Backend, TerminalSession


def _figures(i: int) -> dict:
    return {"memory_bytes": 4_000_000 + i, "pss_bytes": 600_000, "cpu_percent": 0.5, "processes": 1,
            "sampled_at": timezone.now().isoformat()}


def test_a_round_is_stored_for_the_backends_live_sessions_only(db):
    owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    here = Backend.objects.create(id="ru-here", hostname="h", queue="backend.ru-here", last_heartbeat=timezone.now())
    there = Backend.objects.create(id="ru-there", hostname="h", queue="backend.ru-there", last_heartbeat=timezone.now())
    mine = TerminalSession.objects.bulk_create(
        [TerminalSession(owner=owner, backend=here, epoch=1, status="active") for _ in range(services.USAGE_BATCH + 30)])
    moved = TerminalSession.objects.create(owner=owner, backend=there, epoch=2, status="active")
    ended = TerminalSession.objects.create(owner=owner, backend=here, epoch=1, status="terminated")
    usage = {str(s.pk): _figures(i) for i, s in enumerate(mine)}
    usage[str(moved.pk)] = _figures(-1)
    usage[str(ended.pk)] = _figures(-2)
    usage[str(uuid.uuid4())] = _figures(-3)  # a shell whose session is gone from the database

    stored = services.session_resource_usage_record(backend_id="ru-here", usage=usage)

    assert stored == len(mine)
    got = dict(TerminalSession.objects.filter(pk__in=[s.pk for s in mine]).values_list("pk", "resource_usage"))
    assert {str(pk): figures for pk, figures in got.items()} == {str(s.pk): usage[str(s.pk)] for s in mine}
    for other in (moved, ended):
        other.refresh_from_db()
        assert other.resource_usage in (None, {}), "a session not live on that backend keeps its figures"
