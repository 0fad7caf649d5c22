"""Redis connections and the names of the keys vterm keeps there (hot state, DESIGN.md §1)."""

from __future__ import annotations

import asyncio
import functools

import redis
import redis.asyncio as aredis
from django.conf import settings

REPLY_TTL = 300  # seconds a reply waits for its reader


def _p() -> str:
    return settings.VTERM["REDIS_PREFIX"] + "vterm:"


def heartbeat_key(backend_id: str) -> str:
    return f"{_p()}backend:{backend_id}:hb"


def command_done_key(command_id: str) -> str:
    return f"{_p()}cmd:{command_id}:done"


def reply_key(token: str) -> str:
    return f"{_p()}reply:{token}"


def output_stream_key(session_id: str) -> str:
    return f"{_p()}out:{session_id}"


def session_group(session_id: str) -> str:
    """Channel-layer group of a session's viewers."""
    return f"session.{session_id}"


@functools.cache
def sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=None, socket_connect_timeout=2,
                                health_check_interval=30)


_async_clients: dict[int, aredis.Redis] = {}


def async_client() -> aredis.Redis:
    """One client per event loop: redis.asyncio connections belong to the loop that made them."""
    loop = asyncio.get_running_loop()
    client = _async_clients.get(id(loop))
    if client is None:
        client = aredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, health_check_interval=30)
        _async_clients[id(loop)] = client
    return client
