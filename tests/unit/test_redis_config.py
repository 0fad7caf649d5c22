"""REDIS_URL parsing and what each client is given (vterm_project/redis_config.py).

Pure logic, checked against the clients' own parsers (kombu, channels-redis, redis-py); the
live tests against a Sentinel set are tests/integration/test_redis_sentinel.py and
tests/faults/test_redis_sentinel_failover.py.
"""

from __future__ import annotations

import pytest
from kombu import Connection

from vterm_project import redis_config as rc

SENTINEL_URL = "sentinel://:p%40ss@10.0.0.1:26379,10.0.0.2:26380,[::1]/3"


def test_plain_urls_pass_through():
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@redis.example:6380/2?ssl_cert_reqs=required",
                "unix:///run/redis.sock?db=4"):
        t = rc.redis_target(url)
        assert not t.is_sentinel and t.url == url
        assert rc.channel_layer_host(t, socket_timeout=30) == {"address": url, "socket_timeout": 30}
        assert rc.celery_transport_options(t) == {}
    assert rc.celery_broker_url(rc.redis_target("redis://h:1/0")) == "redis://h:1/0"


def test_unix_socket_broker_url_is_kombus_form():
    # kombu takes a socket's database from virtual_host (a db= would be overwritten with 0); checked
    # live in tests/integration/test_redis_sentinel.py.
    url = rc.celery_broker_url(rc.redis_target("unix:///run/redis.sock?db=4"))
    assert url == "redis+socket:///run/redis.sock?virtual_host=4"


def test_sentinel_url_parsed():
    t = rc.redis_target(SENTINEL_URL, master_name="mymaster", sentinel_password="s3")
    assert t.is_sentinel
    assert t.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26379))
    assert (t.master_name, t.db, t.username, t.password, t.sentinel_password) == ("mymaster", 3, None, "p@ss", "s3")
    assert "p@ss" not in t.redacted() and "mymaster" in t.redacted()


def test_sentinel_url_without_password_or_db():
    t = rc.redis_target("sentinel://a:1", master_name="m")
    assert (t.sentinels, t.db, t.password, t.sentinel_password) == ((("a", 1),), 0, None, None)


def test_password_with_reserved_characters_after_the_last_at():
    t = rc.redis_target("sentinel://user:a@b/c@h:1/0", master_name="m")
    assert (t.username, t.password, t.sentinels) == ("user", "a@b/c", (("h", 1),))


@pytest.mark.parametrize("url, master, message", [
    ("sentinel://h:26379/0", "", "set REDIS_SENTINEL_MASTER"),
    ("sentinel:///0", "m", "at least one sentinel"),
    ("sentinel://h:port/0", "m", "not a number"),
    ("sentinel://h:1/zero", "m", "must be a number"),
    ("sentinel://h:1/0?master=m", "m", "takes no query"),
    ("http://h:1/0", "m", "must start with redis://"),
    ("127.0.0.1:6379", "", "must start with redis://"),
])
def test_bad_urls_say_what_is_wrong(url, master, message):
    with pytest.raises(ValueError, match=message):
        rc.redis_target(url, master_name=master)


def test_settings_refuse_a_sentinel_url_without_a_master(tmp_path):
    import subprocess
    import sys

    env = {"REDIS_URL": "sentinel://127.0.0.1:26379/0", "DJANGO_SETTINGS_MODULE": "vterm_project.settings",
           "VTERM_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env, capture_output=True, check=False,
                         text=True)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr and "REDIS_SENTINEL_MASTER" in out.stderr


def test_celery_broker_is_kombus_sentinel_transport():
    t = rc.redis_target(SENTINEL_URL, master_name="mymaster", sentinel_password="s3")
    url = rc.celery_broker_url(t)
    assert url.split(";") == ["sentinel://:p%40ss@10.0.0.1:26379/3", "sentinel://:p%40ss@10.0.0.2:26380/3",
                              "sentinel://:p%40ss@[::1]:26379/3"]
    options = rc.celery_transport_options(t)
    assert options["master_name"] == "mymaster" and options["sentinel_kwargs"]["password"] == "s3"
    conn = Connection(url, transport_options=options)
    assert conn.transport_cls == "sentinel"
    assert conn.password == "p@ss" and conn.virtual_host == "3"
    assert len(conn.alt) == 3
    # kombu makes every alternate URL a sentinel to ask (its _sentinel_managed_pool); live in
    # tests/integration/test_redis_sentinel.py.
    assert [(u.split("@")[1]) for u in conn.alt] == ["10.0.0.1:26379/3", "10.0.0.2:26380/3", "[::1]:26379/3"]


def test_channel_layer_host_is_a_sentinel_pool():
    from channels_redis.utils import create_pool

    t = rc.redis_target(SENTINEL_URL, master_name="mymaster", sentinel_password="s3")
    pool = create_pool(rc.channel_layer_host(t, socket_timeout=30))
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "p@ss" and pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["socket_timeout"] == 30
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["host"] for s in sentinels] == ["10.0.0.1", "10.0.0.2", "::1"]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == "s3"


def test_redis_py_clients_ask_the_sentinels_for_the_master():
    t = rc.redis_target(SENTINEL_URL, master_name="mymaster")
    sync = rc.sync_client(t, socket_timeout=5)
    assert sync.connection_pool.service_name == "mymaster"
    assert sync.connection_pool.connection_kwargs["password"] == "p@ss"
    assert sync.connection_pool.connection_kwargs["socket_timeout"] == 5
    # No sentinel password: the sentinels are asked without one.
    assert sync.connection_pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] is None
    aio = rc.async_client(t, socket_timeout=None)
    assert aio.connection_pool.service_name == "mymaster" and aio.connection_pool.connection_kwargs["db"] == 3
