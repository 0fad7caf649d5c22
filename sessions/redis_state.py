"""Redis connections and the names of the keys vterm keeps there (hot state, DESIGN.md §1)."""

from __future__ import annotations

import asyncio
import functools
import hashlib

import redis
import redis.asyncio as aredis
from django.conf import settings

from vterm_project import redis_config

REPLY_TTL = 300  # seconds a reply waits for its reader


def _p() -> str:
    return settings.VTERM["REDIS_PREFIX"] + "vterm:"


def heartbeat_key(backend_id: str) -> str:
    return f"{_p()}backend:{backend_id}:hb"


def command_done_key(command_id: str) -> str:
    return f"{_p()}cmd:{command_id}:done"


def job_output_key(job_id: str) -> str:
    """A background job's output so far (a string, appended to by its backend; sessions/jobs.py)."""
    return f"{_p()}job:{job_id}:out"


def reply_key(token: str) -> str:
    return f"{_p()}reply:{token}"


def reply_channel() -> str:
    """Pub/sub channel on which the name of each reply list is published when a reply is pushed
    (sessions/waits.py)."""
    return f"{_p()}replies"


def output_stream_key(session_id: str) -> str:
    return f"{_p()}out:{session_id}"


def backend_inbox_key(backend_id: str) -> str:
    """List of a backend's hot calls (commands, keystrokes, Ctrl-C, resize): workers/inbox.py."""
    return f"{_p()}backend:{backend_id}:inbox"


def backend_stats_key(backend_id: str) -> str:
    """Hash of a backend's resource figures, written with its heartbeat (workers/backend_stats.py)."""
    return f"{_p()}backend:{backend_id}:stats"


def pool_decision_key() -> str:
    """The autoscaler's last decision (JSON; sessions/autoscaler.py)."""
    return f"{_p()}pool:decision"


def pool_desired_key() -> str:
    """How many backends the pool wants; executors (local scaler, KEDA via the metric) follow it."""
    return f"{_p()}pool:desired"


def pool_autoscaler_state_key() -> str:
    return f"{_p()}pool:autoscaler"


def session_lock_key(session_id: str) -> str:
    """Held while a session's placement changes (sessions/failover.py): one mover at a time."""
    return f"{_p()}lock:session:{session_id}"


def reconcile_lock_key() -> str:
    return f"{_p()}lock:reconcile"


def reconcile_last_key() -> str:
    """When the pool reconcile last ran (a long gap means the whole pool was down)."""
    return f"{_p()}reconcile:last"


def reconcile_grace_key() -> str:
    return f"{_p()}reconcile:grace"


def orphans_throttle_key() -> str:
    return f"{_p()}reconcile:orphans"


def retention_lock_key() -> str:
    """Held while a retention purge runs (sessions/retention.py): one at a time."""
    return f"{_p()}lock:retention"


def retention_last_key() -> str:
    """When a retention purge last finished (unix time), for /metrics."""
    return f"{_p()}retention:last"


def breaker_failures_key(backend_id: str) -> str:
    return f"{_p()}backend:{backend_id}:failures"


def breaker_open_key(backend_id: str) -> str:
    """Set (with a TTL, the cool-down) while a backend that kept failing gets no placements."""
    return f"{_p()}backend:{backend_id}:breaker"


def ws_open_key(user_id) -> str:
    """Sorted set of a user's open WebSockets, on every web node (member: the connection's channel
    name; score: when its claim lapses unless renewed): the cap VTERM_WS_MAX_PER_USER."""
    return f"{_p()}ws:open:{user_id}"


def idempotency_record_key(user_id, key: str) -> str:
    """Hash of one of a user's Idempotency-Keys (sessions/idempotency.py); the key is hashed: any
    printable characters, a name of bounded length."""
    return f"{_p()}idem:{user_id}:{hashlib.sha256(key.encode()).hexdigest()}"


def session_group(session_id: str) -> str:
    """Channel-layer group of a session's viewers."""
    return f"session.{session_id}"


# Short timeouts: with Redis paused or gone, a request fails fast (503) instead of hanging.
SOCKET_TIMEOUT = 5.0


def _target() -> redis_config.RedisTarget:
    """settings.REDIS_URL (one Redis, or Sentinel's master: vterm_project/redis_config.py)."""
    return redis_config.redis_target(settings.REDIS_URL, master_name=settings.REDIS_SENTINEL_MASTER,
                                     sentinel_password=settings.REDIS_SENTINEL_PASSWORD)


@functools.cache
def sync_client() -> redis.Redis:
    return redis_config.sync_client(_target(), socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=2,
                                    health_check_interval=30)


_async_clients: dict[tuple[int, bool], aredis.Redis] = {}


def async_client(blocking: bool = False) -> aredis.Redis:
    """One client per event loop (redis.asyncio connections belong to the loop that made them).

    ``blocking`` clients have no socket timeout: the reply subscriber's (sessions/waits.py).
    """
    loop = asyncio.get_running_loop()
    client = _async_clients.get((id(loop), blocking))
    if client is None:
        client = redis_config.async_client(_target(), socket_connect_timeout=2, health_check_interval=30,
                                           socket_timeout=None if blocking else SOCKET_TIMEOUT)
        _async_clients[(id(loop), blocking)] = client
    return client
