"""The stores' sizes that /metrics reports (sessions/storage_metrics.py), against the test database
(SQLite here; PostgreSQL when tests/unit/test_retention.py runs this file with DATABASE_URL) and a
real Redis."""

from __future__ import annotations

import os
import uuid

import pytest
from django.contrib.auth import get_user_model

from sessions import storage_metrics
from sessions.models import Command, TerminalSession
from sessions.redis_state import sync_client
from vterm_project.devstack import free_port


@pytest.fixture
def live_redis(redis_url, settings):
    settings.REDIS_URL = redis_url
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:"}
    sync_client.cache_clear()
    yield sync_client()
    sync_client.cache_clear()


def test_the_database_size_grows_with_what_it_holds(db):
    before = storage_metrics.database_size_bytes()
    owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    session = TerminalSession.objects.create(owner=owner)
    # Incompressible output, so that PostgreSQL's TOAST cannot make it small.
    for seq in range(1, 9):
        Command.objects.create(session=session, seq=seq, command="x", output=os.urandom(128 * 1024).hex())
    assert before > 0
    assert storage_metrics.database_size_bytes() - before >= 1024 * 1024


def test_the_families_name_every_size(db, live_redis, settings):
    settings.VTERM = {**settings.VTERM, "DATABASE_MAX_BYTES": 10**9}
    families = {f.name: f.samples[0].value for f in storage_metrics.storage_families()}
    info = live_redis.info("memory")
    assert families["vterm_database_size_bytes"] == storage_metrics.database_size_bytes()
    assert families["vterm_database_max_bytes"] == 10**9
    assert families["vterm_redis_memory_used_bytes"] > 0
    assert families["vterm_redis_memory_max_bytes"] == info["maxmemory"]
    assert families["vterm_redis_memory_system_bytes"] == info["total_system_memory"]


def test_a_redis_that_does_not_answer_leaves_its_series_out(db, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    sync_client.cache_clear()
    try:
        names = {f.name for f in storage_metrics.storage_families()}
    finally:
        sync_client.cache_clear()
    assert "vterm_database_size_bytes" in names
    assert not any(n.startswith("vterm_redis_") for n in names)
