"""The pool reconcile against a real Redis and the test database: idle sessions, the start-up
grace, and a dead backend whose sessions have nowhere to go."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions import failover
from sessions.models import Backend, Command, TerminalSession
from sessions.redis_state import reconcile_grace_key, sync_client


@pytest.fixture
def live_redis(redis_url, settings):
    settings.REDIS_URL = redis_url
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url], "prefix": "t-asgi"}}}
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:", "HEARTBEAT_TTL": 5,
                      "RECONCILE_INTERVAL": 1, "SESSION_IDLE_TTL": 60}
    sync_client.cache_clear()
    channel_layers.backends = {}
    yield sync_client()
    sync_client.cache_clear()
    channel_layers.backends = {}


@pytest.fixture
def owner(db):
    return get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")


def _session(owner, backend, **fields) -> TerminalSession:
    return TerminalSession.objects.create(owner=owner, backend=backend, epoch=1,
                                          status=TerminalSession.Status.ACTIVE, **fields)


def test_idle_sessions_end_after_the_ttl_busy_and_recent_ones_stay(live_redis, owner):
    backend = Backend.objects.create(id="idle-1", hostname="h", queue="backend.idle-1", last_heartbeat=timezone.now())
    old = timezone.now() - timedelta(hours=1)
    idle = _session(owner, backend)
    busy = _session(owner, backend)
    recent = _session(owner, backend)
    TerminalSession.objects.filter(pk__in=[idle.pk, busy.pk]).update(last_activity=old)
    Command.objects.create(session=busy, seq=1, command="sleep 1000", status=Command.Status.RUNNING)

    assert failover._reconcile_idle() == [str(idle.pk)]
    idle.refresh_from_db()
    assert idle.status == "terminated" and idle.status_reason == "idle for more than 60 s"
    for s in (busy, recent):
        s.refresh_from_db()
        assert s.status == "active"


def test_a_stale_backend_waits_out_the_start_grace_then_is_dead_and_its_sessions_lost(live_redis, owner):
    stale = timezone.now() - timedelta(seconds=60)
    backend = Backend.objects.create(id="gone-1", hostname="h", queue="backend.gone-1", last_heartbeat=stale)
    session = _session(owner, backend)
    running = Command.objects.create(session=session, seq=1, command="sleep 1000", status=Command.Status.RUNNING)
    queued = Command.objects.create(session=session, seq=2, command="echo later")

    first = failover.pool_reconcile()
    assert "skipped" in first, "the first run after the pool was down only starts the grace"
    assert Backend.objects.get(pk="gone-1").status == "healthy"

    live_redis.delete(reconcile_grace_key())  # the grace (one heartbeat TTL) has passed
    second = failover.pool_reconcile()
    assert second["dead"] == ["gone-1"]
    session.refresh_from_db()
    assert session.status == "lost" and "gone-1 was lost" in session.status_reason
    assert "no healthy backend could take it" in session.status_reason
    for cmd in (running, queued):
        cmd.refresh_from_db()
        assert cmd.status == "interrupted" and cmd.reason, cmd.reason
    running_reason = Command.objects.get(pk=running.pk).reason
    assert "was running on backend gone-1" in running_reason
    assert "no healthy backend could take the session" in running_reason  # it did not move
    assert Command.objects.get(pk=queued.pk).reason.startswith("the session was lost: backend gone-1 was lost")


@pytest.mark.parametrize("status", ["initializing", "migrating"])
def test_a_shell_up_whose_start_was_not_marked_done_is_finished_once(live_redis, owner, status):
    """The periodic reconcile finds a shell whose session is still initializing (or migrating):
    it leaves the marking to the backend (under the session's lock), and whichever of the start
    and the reconcile marks it first gets the queued commands; the other gets none, so each runs once."""
    from sessions import services

    backend = Backend.objects.create(id=f"fin-{status[:4]}", hostname="h", queue="backend.fin",
                                     last_heartbeat=timezone.now())
    session = TerminalSession.objects.create(owner=owner, backend=backend, epoch=2, status=status)
    queued = [Command.objects.create(session=session, seq=i, command=f"echo {i}") for i in (1, 2)]
    shell = failover.ShellState(name=str(session.pk), epoch=2, busy=False, last_command="", cwd="/tmp")

    plan = failover.backend_reconcile_shells(backend_id=backend.id, shells=[shell], restarted=False)
    assert plan.finish == [(str(session.pk), status, 2, "/tmp")] and plan.run == [] and plan.kill == []
    session.refresh_from_db()
    assert session.status == status, "the plan alone changes nothing"

    # The start (or move) got there first: the reconcile's turn finds nothing to run.
    if status == "initializing":
        first = services.session_started(session_id=str(session.pk), epoch=2, cwd="/tmp")
    else:
        first = failover.session_resumed(session_id=str(session.pk), epoch=2, backend_id=backend.id, cwd="/tmp")
    assert [c["id"] for c in first] == [str(c.pk) for c in queued]
    again = failover.session_start_finish(session_id=str(session.pk), status=status, epoch=2,
                                          backend_id=backend.id, cwd="/tmp")
    assert again == []
    session.refresh_from_db()
    assert session.status == "active"


def test_the_reconcile_marks_up_a_start_that_never_finished(live_redis, owner):
    backend = Backend.objects.create(id="fin-lone", hostname="h", queue="backend.fin-lone",
                                     last_heartbeat=timezone.now())
    session = TerminalSession.objects.create(owner=owner, backend=backend, epoch=1, status="initializing")
    cmd = Command.objects.create(session=session, seq=1, command="echo waited")
    got = failover.session_start_finish(session_id=str(session.pk), status="initializing", epoch=1,
                                        backend_id=backend.id, cwd="/srv")
    assert [c["id"] for c in got] == [str(cmd.pk)]
    session.refresh_from_db()
    assert (session.status, session.cwd) == ("active", "/srv")
    # A stale epoch (the session was placed again meanwhile) is fenced off.
    assert failover.session_start_finish(session_id=str(session.pk), status="initializing", epoch=0,
                                         backend_id=backend.id, cwd="/srv") == []
