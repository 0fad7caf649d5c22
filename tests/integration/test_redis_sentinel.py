"""Every Redis client vterm makes, from REDIS_URL through vterm_project/redis_config.py, against
real servers: a Sentinel set of the test's own (a primary is killed with SIGKILL and each client
must go on with the promoted replica, without being made again) and a Redis on a unix socket.

The clients: redis-py sync and asyncio (sessions/redis_state.py), the Celery broker (kombu's
sentinel transport, publish and consume), the channel layer (channels-redis).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery
from channels_redis.core import RedisChannelLayer
from kombu import Connection

from tests.redis_sentinel import SentinelSet
from vterm_project import redis_config as rc

pytestmark = pytest.mark.integration


def _celery_app(t: rc.RedisTarget) -> Celery:
    app = Celery("sentinel-test")
    app.conf.broker_url = rc.celery_broker_url(t)
    app.conf.broker_transport_options = {"socket_timeout": 3, "socket_connect_timeout": 2,
                                         **rc.celery_transport_options(t)}
    return app


def _retrying(call, what: str, timeout: float = 30):
    """``call()`` until it succeeds: the first calls after a failover may still meet the dead primary."""
    end = time.monotonic() + timeout
    while True:
        try:
            return call()
        except Exception:  # noqa: BLE001 (whatever the client raises while the primary is gone)
            if time.monotonic() > end:
                raise AssertionError(f"{what} did not work again within {timeout:g} s") from None
            time.sleep(0.2)


def _roundtrip(app: Celery, queue: str, body: str) -> str:
    with app.connection_for_write() as conn, conn.SimpleQueue(queue) as q:
        q.put(body)
        msg = q.get(timeout=5)
        msg.ack()
        return msg.payload


async def _layer_roundtrip(layer: RedisChannelLayer, text: str) -> str:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "test.message", "text": text})
    got = await asyncio.wait_for(layer.receive(channel), 10)
    return got["text"]


@pytest.fixture(scope="module")
def sentinels():
    with SentinelSet() as s:
        yield s


def test_every_client_follows_a_failover(sentinels):
    t = rc.redis_target(sentinels.url, master_name=sentinels.master_name,
                        sentinel_password=sentinels.sentinel_password)
    key = f"sentinel-test:{uuid.uuid4().hex}"
    sync = rc.sync_client(t, socket_timeout=2, socket_connect_timeout=1)
    app = _celery_app(t)
    layer = RedisChannelLayer(hosts=[rc.channel_layer_host(t, socket_timeout=5)], prefix=f"st{uuid.uuid4().hex[:6]}")
    loop = asyncio.new_event_loop()
    aio = None
    try:
        aio = loop.run_until_complete(_make_async(t))
        sync.rpush(key, "before")
        assert loop.run_until_complete(aio.lrange(key, 0, -1)) == [b"before"]
        assert _roundtrip(app, "sentinel-test-q", "before") == "before"
        assert loop.run_until_complete(_layer_roundtrip(layer, "before")) == "before"
        sync.wait(1, 2000)  # "before" is on the replica: what follows must find it there

        old = sentinels.kill_primary()
        new = sentinels.wait_promoted(old)
        assert new != old

        # The same client objects, not new ones: each asks the sentinels again.
        _retrying(lambda: sync.rpush(key, "after"), "the sync client")
        assert sync.lrange(key, 0, -1) == [b"before", b"after"]
        assert sync.connection_pool.get_master_address()[1] == new
        got = _retrying(lambda: loop.run_until_complete(aio.lrange(key, 0, -1)), "the asyncio client")
        assert got == [b"before", b"after"]
        assert _retrying(lambda: _roundtrip(app, "sentinel-test-q", "after"), "the Celery broker") == "after"
        assert _retrying(lambda: loop.run_until_complete(_layer_roundtrip(layer, "after")),
                         "the channel layer") == "after"
    finally:
        sync.delete(key)
        if aio is not None:
            loop.run_until_complete(aio.aclose())
        loop.run_until_complete(layer.flush())
        loop.close()
        app.close()
        sentinels.restart_node(old)
        sentinels.wait_replica_attached()


async def _make_async(t):
    return rc.async_client(t, socket_timeout=2, socket_connect_timeout=1)


def test_a_wrong_sentinel_password_is_refused_with_its_reason(sentinels):
    t = rc.redis_target(sentinels.url, master_name=sentinels.master_name, sentinel_password="wrong")
    client = rc.sync_client(t, socket_timeout=2, socket_connect_timeout=1)
    with pytest.raises(Exception) as err:
        client.ping()
    assert "No master found" in str(err.value) and "AuthenticationError" in str(err.value), err.value


def test_unix_socket(tmp_path):
    """unix:// for redis-py and channels-redis; kombu's own form of it for Celery."""
    sock_dir = Path(tempfile.mkdtemp(prefix="vterm-unix-redis-"))  # short: socket paths are limited
    sock = sock_dir / "redis.sock"
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", "0", "--unixsocket", str(sock),
                             "--save", "", "--dir", str(sock_dir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        t = rc.redis_target(f"unix://{sock}?db=3")
        client = _retrying(lambda: (c := rc.sync_client(t, socket_timeout=2)).ping() and c, "the unix socket", 10)
        assert _roundtrip(_celery_app(t), "unix-test-q", "hello") == "hello"
        assert client.info("keyspace").get("db3"), "the broker's messages went to database 3"
        layer = RedisChannelLayer(hosts=[rc.channel_layer_host(t)])
        assert asyncio.run(_layer_roundtrip(layer, "hi")) == "hi"
        with Connection(rc.celery_broker_url(t)) as conn:
            conn.ensure_connection(max_retries=1)
    finally:
        proc.kill()
        proc.wait(10)
        shutil.rmtree(sock_dir, ignore_errors=True)
