"""Circuit breaker and placement, against a real Redis and the test database."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions import circuit, pool, services
from sessions.api_errors import ServiceUnavailable
from sessions.models import Backend
from sessions.redis_state import sync_client


@pytest.fixture
def breaker_redis(redis_url, settings):
    settings.REDIS_URL = redis_url
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:", "BREAKER_FAILURES": 2,
                      "BREAKER_WINDOW": 60, "BREAKER_COOLDOWN": 30}
    sync_client.cache_clear()
    yield sync_client()
    sync_client.cache_clear()


@pytest.fixture
def two_backends(db):
    now = timezone.now()
    return [Backend.objects.create(id=f"cb-{i}", hostname="h", queue=f"backend.cb-{i}", last_heartbeat=now)
            for i in (1, 2)]


def test_failures_open_the_breaker_and_placement_avoids_it(breaker_redis, two_backends):
    a, b = two_backends
    assert circuit.breaker_record_failure(a.id) is False
    assert circuit.breaker_open_ids([a.id, b.id]) == set()
    assert circuit.breaker_record_failure(a.id) is True, "the second failure in the window opens it"
    assert circuit.breaker_open_ids([a.id, b.id]) == {a.id}
    assert 0 < breaker_redis.ttl(f"{services.settings.VTERM['REDIS_PREFIX']}vterm:backend:{a.id}:breaker") <= 30
    assert all(pool.backend_pick_least_loaded().id == b.id for _ in range(3))


def test_a_success_resets_the_count(breaker_redis, two_backends):
    a, _ = two_backends
    circuit.breaker_record_failure(a.id)
    circuit.breaker_record_success(a.id)
    assert circuit.breaker_record_failure(a.id) is False


def test_no_backend_with_room_is_503_not_a_hang(breaker_redis, two_backends):
    for backend in two_backends:
        for _ in range(2):
            circuit.breaker_record_failure(backend.id)
    assert pool.backend_pick_least_loaded() is None
    owner = get_user_model().objects.create(username="cb-owner")
    with pytest.raises(ServiceUnavailable) as err:
        services._session_place(owner=owner, name="", cwd="", env={}, cols=80, rows=24)
    assert err.value.status_code == 503 and err.value.retry_after > 0
