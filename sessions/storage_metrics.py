"""How full the stores are, read at scrape time for /metrics: the database's size and Redis' memory.

The alerts on them (deploy/prometheus/alerts.yml) fire before either fills: Redis runs with
``noeviction``, so a full Redis refuses writes and commands fail; a full disk stops the database.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable

from django.conf import settings
from django.db import connection
from prometheus_client.core import GaugeMetricFamily

from .redis_state import retention_last_key, sync_client

log = logging.getLogger(__name__)


def database_size_bytes() -> int:
    """SQLite: the sizes of its file and write-ahead log; PostgreSQL: pg_database_size."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            return int(cursor.fetchone()[0])
    if connection.vendor == "sqlite":
        path = str(connection.settings_dict["NAME"])
        if os.path.exists(path):
            return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        # In memory (the test suite): the pages it holds.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA page_count")
            pages = cursor.fetchone()[0]
            cursor.execute("PRAGMA page_size")
            return int(pages * cursor.fetchone()[0])
    raise NotImplementedError(connection.vendor)


def database_filesystem() -> tuple[int, int] | None:
    """(size, free bytes) of the filesystem an SQLite file is on; None for a database server."""
    path = str(connection.settings_dict["NAME"])
    if connection.vendor != "sqlite" or not os.path.exists(path):
        return None
    usage = shutil.disk_usage(os.path.dirname(os.path.abspath(path)))
    return usage.total, usage.free


def redis_memory() -> dict[str, int]:
    """INFO memory: used_memory, maxmemory (0: no limit) and total_system_memory."""
    info = sync_client().info("memory")
    return {k: int(info.get(k, 0)) for k in ("used_memory", "maxmemory", "total_system_memory")}


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def storage_families() -> Iterable[GaugeMetricFamily]:
    """The database's and Redis' gauges; a store that does not answer is left out, not fatal."""
    out = []
    try:
        out.append(_gauge("vterm_database_size_bytes",
                          "Size of the database: SQLite's file and WAL, or PostgreSQL's pg_database_size.",
                          database_size_bytes()))
        fs = database_filesystem()
        if fs is not None:
            out.append(_gauge("vterm_database_filesystem_size_bytes",
                              "Size of the filesystem the SQLite database is on.", fs[0]))
            out.append(_gauge("vterm_database_filesystem_free_bytes",
                              "Free space on the filesystem the SQLite database is on.", fs[1]))
    except Exception:
        log.warning("metrics: database size unavailable", exc_info=True)
    if settings.VTERM["DATABASE_MAX_BYTES"] > 0:
        out.append(_gauge("vterm_database_max_bytes", "Space the database may use (VTERM_DATABASE_MAX_BYTES).",
                          settings.VTERM["DATABASE_MAX_BYTES"]))
    try:
        mem = redis_memory()
        last = sync_client().get(retention_last_key())
    except Exception:
        log.warning("metrics: Redis memory unavailable", exc_info=True)
        return out
    out.append(_gauge("vterm_redis_memory_used_bytes", "Memory Redis uses (INFO memory used_memory).",
                      mem["used_memory"]))
    out.append(_gauge("vterm_redis_memory_max_bytes", "Redis' maxmemory; 0: no limit.", mem["maxmemory"]))
    out.append(_gauge("vterm_redis_memory_system_bytes", "Memory of the host Redis runs on (total_system_memory).",
                      mem["total_system_memory"]))
    if last is not None:
        out.append(_gauge("vterm_retention_last_run_timestamp_seconds",
                          "When the retention purge last finished a run (unix time).", float(last)))
    return out
