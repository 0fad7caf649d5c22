"""REDIS_URL turned into what each Redis client needs: the one place that reads it (framework-free).

``REDIS_URL`` is one of

- ``redis://[[user]:password@]host:port/db``, ``rediss://…`` (TLS), ``unix:///path?db=N``: one Redis;
- ``sentinel://[[user]:password@]host:port[,host:port…]/db`` with ``REDIS_SENTINEL_MASTER`` (the
  master set's name): Redis Sentinel. The password is the master's (and its replicas'); sentinels
  that require a password of their own get ``REDIS_SENTINEL_PASSWORD``.

Every client asks the sentinels for the master when it connects and asks again after a connection
error, so when a replica is promoted each process follows within seconds, without a restart
(docs/failover.md). The clients: redis-py (sync and asyncio: ``Sentinel(...).master_for``), the
Celery broker (kombu's ``sentinel://`` transport, one URL per sentinel joined with ``;`` and
``master_name`` in the transport options: https://docs.celeryq.dev/en/stable/getting-started/backends-and-brokers/redis.html)
and channels-redis (a ``sentinels`` host: https://github.com/django/channels_redis#sentinel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_SENTINEL_PORT = 26379
# Asking a sentinel is quick; one that does not answer is skipped for the next one soon.
SENTINEL_SOCKET_TIMEOUT = 2.0
SENTINEL_CONNECT_TIMEOUT = 1.0
DIRECT_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: one server (``url``), or the master of a Sentinel set."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None  # the master's and its replicas'
    sentinel_password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def redacted(self) -> str:
        """The URL without its password, for logs and banners."""
        if self.is_sentinel:
            hosts = ",".join(f"{_host(h)}:{p}" for h, p in self.sentinels)
            return f"sentinel://{hosts}/{self.db} (master {self.master_name})"
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return parts._replace(netloc=netloc).geturl()


def redis_target(url: str, *, master_name: str | None = None, sentinel_password: str | None = None) -> RedisTarget:
    """Parse ``url``; a ValueError says what is wrong with it."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in DIRECT_SCHEMES:
        return RedisTarget(url=url)
    if scheme != "sentinel":
        raise ValueError(f"REDIS_URL must start with redis://, rediss://, unix:// or sentinel://, not {url[:12]!r}…")
    rest = url[len("sentinel://"):]
    userinfo, at, hostpart = rest.rpartition("@")  # the last @: a password may hold one
    if not at:
        userinfo, hostpart = "", rest
    hosts, _, path = hostpart.partition("/")
    if "?" in path or "#" in path:
        raise ValueError("REDIS_URL: a sentinel:// URL takes no query (the master's name is REDIS_SENTINEL_MASTER)")
    sentinels = tuple(_host_port(h) for h in hosts.split(",") if h.strip())
    if not sentinels:
        raise ValueError("REDIS_URL: a sentinel:// URL needs at least one sentinel host:port")
    db_text = path.strip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"REDIS_URL: the database must be a number, not {db_text!r}")
    if not master_name:
        raise ValueError("REDIS_URL is a sentinel:// URL: set REDIS_SENTINEL_MASTER to the name of the "
                         "master set the sentinels monitor (e.g. mymaster)")
    username, colon, password = userinfo.partition(":")
    return RedisTarget(url=url, sentinels=sentinels, master_name=master_name, db=int(db_text),
                       username=unquote(username) or None, password=unquote(password) if colon else None,
                       sentinel_password=sentinel_password or None)


def target_from_env(environ: Mapping[str, str]) -> RedisTarget:
    """REDIS_URL, REDIS_SENTINEL_MASTER and REDIS_SENTINEL_PASSWORD as a target."""
    return redis_target(environ.get("REDIS_URL") or DEFAULT_URL, master_name=environ.get("REDIS_SENTINEL_MASTER"),
                        sentinel_password=environ.get("REDIS_SENTINEL_PASSWORD"))


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [::1]:26379
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ValueError(f"REDIS_URL: sentinel address {text!r} has no host")
    if port and not port.isdigit():
        raise ValueError(f"REDIS_URL: sentinel address {text!r} has a port that is not a number")
    return host, int(port) if port else DEFAULT_SENTINEL_PORT


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- what each client needs ---------------------------------------------------------------


def _sentinel_kwargs(t: RedisTarget) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"socket_timeout": SENTINEL_SOCKET_TIMEOUT,
                              "socket_connect_timeout": SENTINEL_CONNECT_TIMEOUT}
    if t.sentinel_password:
        kwargs["password"] = t.sentinel_password
    return kwargs


def _auth(t: RedisTarget) -> dict[str, Any]:
    return {k: v for k, v in (("username", t.username), ("password", t.password)) if v is not None}


def celery_broker_url(t: RedisTarget) -> str:
    """Celery's broker_url: the URL itself, or one ``sentinel://`` URL per sentinel joined with ``;``."""
    if not t.is_sentinel:
        parts = urlsplit(t.url)
        if parts.scheme == "unix":  # kombu names a socket redis+socket:// and the database virtual_host
            return "redis+socket://" + t.url[len("unix://"):].replace("db=", "virtual_host=")
        return t.url
    auth = ""
    if t.username or t.password is not None:
        auth = f"{quote(t.username or '', safe='')}:{quote(t.password or '', safe='')}@"
    return ";".join(f"sentinel://{auth}{_host(h)}:{p}/{t.db}" for h, p in t.sentinels)


def celery_transport_options(t: RedisTarget) -> dict[str, Any]:
    """What broker_transport_options must add for ``t`` (nothing for one Redis)."""
    if not t.is_sentinel:
        return {}
    return {"master_name": t.master_name, "sentinel_kwargs": _sentinel_kwargs(t)}


def channel_layer_host(t: RedisTarget, **connection: Any) -> dict[str, Any]:
    """One entry of channels-redis' ``hosts``; ``connection``: redis-py connection options."""
    if not t.is_sentinel:
        return {"address": t.url, **connection}
    return {"sentinels": list(t.sentinels), "master_name": t.master_name, "sentinel_kwargs": _sentinel_kwargs(t),
            "db": t.db, **_auth(t), **connection}


def sync_client(t: RedisTarget, **connection: Any):
    """A redis-py client of the master; ``connection``: socket timeouts and such."""
    import redis
    from redis.sentinel import Sentinel

    if not t.is_sentinel:
        return redis.Redis.from_url(t.url, **connection)
    sentinel = Sentinel(list(t.sentinels), sentinel_kwargs=_sentinel_kwargs(t))
    return sentinel.master_for(t.master_name, db=t.db, **_auth(t), **connection)


def async_client(t: RedisTarget, **connection: Any):
    """The same with redis.asyncio (one per event loop: its connections belong to that loop)."""
    import redis.asyncio as aredis
    from redis.asyncio.sentinel import Sentinel

    if not t.is_sentinel:
        return aredis.Redis.from_url(t.url, **connection)
    sentinel = Sentinel(list(t.sentinels), sentinel_kwargs=_sentinel_kwargs(t))
    return sentinel.master_for(t.master_name, db=t.db, **_auth(t), **connection)


def client_for_url(url: str, **connection: Any):
    """A sync client of a URL (a sentinel:// one with REDIS_SENTINEL_MASTER from the environment)."""
    import os

    t = target_from_env({**os.environ, "REDIS_URL": url})
    return sync_client(t, **connection)
