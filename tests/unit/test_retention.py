"""The retention purge (sessions/retention.py) against the test database and a real Redis: it removes
exactly what is past retention, in bounded batches, and leaves live sessions and recent rows.

The suite's database is SQLite; ``test_the_purge_and_the_sizes_on_postgresql`` runs this file and
test_storage_metrics.py again with DATABASE_URL on the PostgreSQL at 127.0.0.1:5432 (pytest-django
makes a fresh test database there and drops it), so both engines meet the same assertions.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from channels.layers import channel_layers
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions import metrics, retention
from sessions.models import AuditEvent, Backend, Command, SessionEvent, TerminalSession
from sessions.redis_state import output_stream_key, retention_last_key, retention_lock_key, sync_client

ROOT = Path(__file__).resolve().parents[2]
BATCH = 3
KEEP_COMMANDS = 5
Status = TerminalSession.Status


@pytest.fixture
def live_redis(redis_url, settings):
    settings.REDIS_URL = redis_url
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                           "CONFIG": {"hosts": [redis_url], "prefix": "t-asgi"}}}
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:",
                      "RETENTION_SESSIONS_DAYS": 30, "RETENTION_AUDIT_DAYS": 180,
                      "RETENTION_COMMANDS": KEEP_COMMANDS, "RETENTION_BATCH_SIZE": BATCH,
                      "RETENTION_BATCH_PAUSE": 0, "RETENTION_RUN_SECONDS": 600}
    sync_client.cache_clear()
    channel_layers.backends = {}
    r = sync_client()
    yield r
    for key in r.scan_iter(match=settings.VTERM["REDIS_PREFIX"] + "*"):
        r.delete(key)
    sync_client.cache_clear()
    channel_layers.backends = {}


class World:
    """Rows on both sides of every retention line, made with their times set in the past."""

    def __init__(self, now) -> None:
        self.now = now
        self.owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
        self.backend = Backend.objects.create(id=f"b-{uuid.uuid4().hex[:6]}", hostname="h", queue="q")

    def days_ago(self, days: float):
        return self.now - timedelta(days=days)

    def session(self, status: str, *, created_days: float, ended_days: float | None = None,
                commands: int = 0, running: tuple[int, ...] = (), events: int = 1) -> TerminalSession:
        s = TerminalSession.objects.create(owner=self.owner, backend=self.backend, status=status,
                                           command_count=commands)
        TerminalSession.objects.filter(pk=s.pk).update(
            created_at=self.days_ago(created_days), last_activity=self.days_ago(ended_days or 0),
            terminated_at=self.days_ago(ended_days) if ended_days is not None else None)
        for seq in range(1, commands + 1):
            Command.objects.create(session=s, seq=seq, command=f"echo {seq}",
                                   status=Command.Status.RUNNING if seq in running else Command.Status.SUCCEEDED)
        for _ in range(events):
            SessionEvent.objects.create(session=s, status=status, reason="made by the test")
        return s

    def audit(self, days: float) -> AuditEvent:
        event = AuditEvent.objects.create(username="x", action="command.run")
        AuditEvent.objects.filter(pk=event.pk).update(at=self.days_ago(days))
        return event


@pytest.fixture
def world(transactional_db, live_redis):
    return World(timezone.now())


def _ids(model, **filters) -> set:
    return set(model.objects.filter(**filters).values_list("pk", flat=True))


def _pk_list_sizes(sql: str) -> list[int]:
    """How many rows (or sessions) each ``"id" IN (...)`` (``"session_id" IN``) of a statement names."""
    return [len(m.split(",")) for m in re.findall(r'"(?:session_)?id" IN \(([^()]*)\)', sql)]


def test_the_purge_removes_exactly_what_is_past_retention_in_batches(world, live_redis):
    w = world
    # Past retention: ended 31 days ago (terminated and lost), with commands, events and a stream.
    old_ended = w.session(Status.TERMINATED, created_days=40, ended_days=31, commands=7, events=2)
    w.session(Status.LOST, created_days=35, ended_days=30.5)
    live_redis.xadd(output_stream_key(str(old_ended.pk)), {"d": "x"})
    # Kept: ended 29 days ago; live for 100 days (8 commands: the 3 oldest are over the cap of 5,
    # and of those the running one stays); live and recent.
    recent_ended = w.session(Status.TERMINATED, created_days=40, ended_days=29, commands=2)
    live_old = w.session(Status.ACTIVE, created_days=100, commands=8, running=(2,))
    live_new = w.session(Status.ACTIVE, created_days=0, commands=1)
    old_audit = {w.audit(181).pk for _ in range(4)}
    kept_audit = {w.audit(179).pk, w.audit(0).pk}
    kept_commands = (_ids(Command, session__in=[recent_ended, live_new])
                     | _ids(Command, session=live_old, seq__in=[2, 4, 5, 6, 7, 8]))
    kept_events = _ids(SessionEvent, session__in=[recent_ended, live_old, live_new])

    with CaptureQueriesContext(connection) as queries:
        report = retention.retention_purge(now=w.now)

    assert report.complete
    assert report.deleted == {"sessions": 2, "commands": 7 + 2, "session_events": 3, "audit_events": 4}
    assert _ids(TerminalSession) == {recent_ended.pk, live_old.pk, live_new.pk}
    assert _ids(Command) == kept_commands
    assert _ids(SessionEvent) == kept_events
    assert _ids(AuditEvent) == kept_audit and not old_audit & _ids(AuditEvent)
    assert not live_redis.exists(output_stream_key(str(old_ended.pk)))
    assert float(live_redis.get(retention_last_key())) > 0
    assert not live_redis.exists(retention_lock_key())

    # In batches: no DELETE names more than BATCH rows or sessions by key.
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    assert deletes and all(n <= BATCH for sql in deletes for n in _pk_list_sizes(sql)), deletes
    # The ended sessions' 7 commands (3 + 3 + 1), their 3 events, the 2 sessions, live_old's 2
    # commands over the cap, the 4 old audit events (3 + 1).
    assert report.batches == 3 + 1 + 1 + 1 + 2

    # What was removed is counted in the pool-wide series /metrics reads.
    events = metrics.read_events()
    for kind, n in report.deleted.items():
        assert events.get((metrics.RETENTION_DELETED, (kind,), ""), 0) == n, kind

    # A second run finds nothing more.
    again = retention.retention_purge(now=w.now)
    assert again.complete and not any(again.deleted.values())


def test_zero_keeps_everything(world, settings):
    settings.VTERM = {**settings.VTERM, "RETENTION_SESSIONS_DAYS": 0, "RETENTION_AUDIT_DAYS": 0,
                      "RETENTION_COMMANDS": 0}
    w = world
    w.session(Status.TERMINATED, created_days=4000, ended_days=3999, commands=20)
    w.audit(4000)
    before = (TerminalSession.objects.count(), Command.objects.count(), AuditEvent.objects.count())

    report = retention.retention_purge(now=w.now)

    assert report.complete and not any(report.deleted.values()) and report.batches == 0
    assert (TerminalSession.objects.count(), Command.objects.count(), AuditEvent.objects.count()) == before


def test_a_run_out_of_time_stops_between_batches_and_the_next_goes_on(world, settings):
    w = world
    old = w.session(Status.TERMINATED, created_days=40, ended_days=31, commands=10)
    settings.VTERM = {**settings.VTERM, "RETENTION_RUN_SECONDS": 0}

    stopped = retention.retention_purge(now=w.now)

    assert not stopped.complete and stopped.batches == 0 and TerminalSession.objects.filter(pk=old.pk).exists()
    settings.VTERM = {**settings.VTERM, "RETENTION_RUN_SECONDS": 600}
    done = retention.retention_purge(now=w.now)
    assert done.complete and done.deleted["commands"] == 10 and done.deleted["sessions"] == 1
    assert not TerminalSession.objects.filter(pk=old.pk).exists()


def test_one_run_at_a_time(world, live_redis):
    w = world
    w.session(Status.TERMINATED, created_days=40, ended_days=31, commands=1)
    live_redis.set(retention_lock_key(), "another run", ex=60)

    assert retention.retention_purge(now=w.now) is None
    assert TerminalSession.objects.count() == 1


def _postgres_answers() -> bool:
    import psycopg

    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.mark.skipif("DATABASE_URL" in os.environ, reason="already running on DATABASE_URL")
def test_the_purge_and_the_sizes_on_postgresql(tmp_path):
    """This file and test_storage_metrics.py again, on a fresh PostgreSQL test database."""
    if not _postgres_answers():
        pytest.skip("no PostgreSQL at 127.0.0.1:5432")
    # pytest-django creates test_<name> from this and drops it at the end.
    name = f"vterm_retention_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{name}",
           "VTERM_DATA_DIR": str(tmp_path)}
    files = [__file__, str(Path(__file__).with_name("test_storage_metrics.py"))]
    result = subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
                             "-k", "not postgresql"], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\b7 passed\b", result.stdout), result.stdout[-2000:]
