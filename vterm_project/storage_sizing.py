"""Measure what vterm stores: bytes per session, per command and per output stream, and the purge.

    .venv/bin/python -m vterm_project.storage_sizing [--sessions 20] [--commands 3000]
        [--database-url postgresql://postgres@127.0.0.1:5432/postgres]

Starts a stack of its own (a private Redis, SQLite in a temporary directory, or a fresh database
made on the given PostgreSQL server and dropped at the end; one backend, no beat), then: creates
the sessions, runs ``true`` commands over them, commands that print 1000 bytes, ends the sessions,
floods one session's stream, and runs the retention purge on everything, aged past retention.
After each step it prints the growth of the database (SQLite: the pages in use after a WAL
checkpoint; PostgreSQL: pg_database_size) and of Redis (used_memory, MEMORY USAGE of the streams).
The figures in docs/operations.md ("Retention and sizing") come from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import redis

from .devstack import Stack, StackConfig, free_port

# Run in the stack's environment (manage.py shell): the database's bytes in use and its rows.
DB_STATE = """
import json
from django.apps import apps
from django.db import connection
with connection.cursor() as c:
    if connection.vendor == "sqlite":
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.execute("PRAGMA page_count"); pages = c.fetchone()[0]
        c.execute("PRAGMA freelist_count"); free = c.fetchone()[0]
        c.execute("PRAGMA page_size"); size = c.fetchone()[0]
        used = (pages - free) * size
    else:
        c.execute("SELECT pg_database_size(current_database())"); used = c.fetchone()[0]
    # Bytes per table, its indexes included (SQLite: the dbstat table, where compiled in).
    models = list(apps.get_app_config("vterm_sessions").get_models())
    tables = {}
    for m in models:
        t = m._meta.db_table
        if connection.vendor == "sqlite":
            try:
                c.execute("SELECT SUM(d.pgsize) FROM dbstat d JOIN sqlite_master s ON d.name = s.name "
                          "WHERE s.tbl_name = %s", [t])
                tables[m.__name__] = c.fetchone()[0] or 0
            except Exception:
                pass
        else:
            c.execute("SELECT pg_total_relation_size(%s)", [t])
            tables[m.__name__] = c.fetchone()[0]
from sessions.storage_metrics import database_size_bytes
rows = {m.__name__: m.objects.count() for m in models}
print(json.dumps({"used": used, "file": database_size_bytes(), "rows": rows, "tables": tables}))
"""

# Every session ended 31 days ago, then one purge run with the settings' batch size and pause.
PURGE = """
import json, time
from datetime import timedelta
from django.conf import settings
from django.utils import timezone
from sessions.models import TerminalSession, AuditEvent
from sessions.retention import retention_purge
long_ago = timezone.now() - timedelta(days=400)
TerminalSession.objects.update(created_at=long_ago, terminated_at=long_ago, last_activity=long_ago)
AuditEvent.objects.update(at=long_ago)
settings.VTERM["RETENTION_RUN_SECONDS"] = 3600
began = time.monotonic()
report = retention_purge()
print(json.dumps({**report.as_dict(), "seconds": time.monotonic() - began}))
"""


class Sizer:
    def __init__(self, st: Stack, r: redis.Redis) -> None:
        self.st, self.r = st, r
        self.last_db = self.db()
        self.last_redis = self.redis_used()
        self.last_dir = self.data_dir()

    def db(self) -> dict:
        out = self.st.config.manage("shell", "-c", DB_STATE).stdout.strip().splitlines()[-1]
        return json.loads(out)

    def data_dir(self) -> dict[str, int]:
        """Bytes of files under the data directory by top-level entry: SQLite and its WAL, the
        private Redis' AOF (redis/), the logs (logs/)."""
        root = self.st.config.data_dir
        out: dict[str, int] = {}
        for p in root.rglob("*"):
            if p.is_file():
                top = p.relative_to(root).parts[0]
                out[top] = out.get(top, 0) + p.stat().st_size
        return out

    def redis_used(self) -> int:
        return int(self.r.info("memory")["used_memory"])

    def streams(self) -> tuple[int, int]:
        keys = list(self.r.scan_iter(match="vterm:out:*"))
        return len(keys), sum(self.r.memory_usage(k) or 0 for k in keys)

    def step(self, what: str, per: int, unit: str) -> dict:
        db, used = self.db(), self.redis_used()
        grew = db["used"] - self.last_db["used"]
        rows = {k: v - self.last_db["rows"].get(k, 0) for k, v in db["rows"].items() if v != self.last_db["rows"].get(k)}
        # Bytes per new row, table by table (indexes included).
        per_row = {k: round((db["tables"][k] - self.last_db["tables"].get(k, 0)) / n)
                   for k, n in rows.items() if n > 0 and k in db["tables"]}
        redis_grew = used - self.last_redis
        data_dir = self.data_dir()
        dir_grew = sum(data_dir.values()) - sum(self.last_dir.values())
        parts = ", ".join(f"{k} {(v - self.last_dir.get(k, 0)) / per:+,.0f}" for k, v in sorted(data_dir.items())
                          if v != self.last_dir.get(k, 0))
        print(f"{what}: database {grew:+,} B = {grew / per:,.0f} B per {unit} (rows {rows}); "
              f"Redis used_memory {redis_grew:+,} B = {redis_grew / per:,.0f} B per {unit}; "
              f"data directory {dir_grew:+,} B = {dir_grew / per:,.0f} B per {unit} ({parts}); "
              f"database file(s) now {db['file']:,} B", flush=True)
        if per_row:
            print(f"  bytes per new row, indexes included: {per_row}", flush=True)
        self.last_db, self.last_redis, self.last_dir = db, used, data_dir
        return db


def run_commands(url: str, token: str, sessions: list[str], command: str, total: int) -> int:
    """``total`` commands, spread over the sessions, one thread per session; returns the failures."""
    failures = 0
    lock = threading.Lock()

    def worker(sid: str, n: int) -> None:
        nonlocal failures
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            for _ in range(n):
                r = http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": command, "wait": 30})
                if r.status_code != 201 or r.json()["status"] != "succeeded":
                    with lock:
                        failures += 1

    share = [total // len(sessions) + (1 if i < total % len(sessions) else 0) for i in range(len(sessions))]
    threads = [threading.Thread(target=worker, args=(s, n)) for s, n in zip(sessions, share, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--commands", type=int, default=3000)
    parser.add_argument("--output-commands", type=int, default=1000)
    parser.add_argument("--database-url", help="a PostgreSQL server: a fresh database is made there")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vterm-sizing-"))
    database_url, admin_url, db_name = None, None, None
    if args.database_url:
        import psycopg

        admin_url = args.database_url
        db_name = f"vterm_sizing_{uuid.uuid4().hex[:8]}"
        parts = urlsplit(admin_url)
        database_url = urlunsplit(parts._replace(path="/" + db_name))
        with psycopg.connect(admin_url, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db_name}"')
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=1, redis_url=None, redis_port=free_port(),
                      database_url=database_url, flower_port=None, beat=False, backend_prefix="sizing",
                      # The per-user rate limit would refuse most of a burst this size.
                      extra_env={"VTERM_COMMAND_RATE": "1000000", "VTERM_COMMAND_BURST": "1000000"})
    st = Stack(cfg)
    try:
        st.start(timeout=120)
        r = redis.Redis.from_url(cfg.redis_url)
        token = st.token("sizing")
        http = httpx.Client(base_url=st.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        print(f"database: {'PostgreSQL ' + db_name if database_url else 'SQLite ' + str(tmp)}", flush=True)
        sizer = Sizer(st, r)

        sessions = []
        for i in range(args.sessions):
            resp = http.post("/api/v1/sessions/", json={"name": f"s{i}"})
            resp.raise_for_status()
            sessions.append(resp.json()["id"])
        sizer.step(f"{args.sessions} sessions created", args.sessions, "session")
        _, streams_created = sizer.streams()

        failed = run_commands(st.url, token, sessions, "true", args.commands)
        sizer.step(f"{args.commands} `true` commands ({failed} failed)", args.commands - failed, "command")
        n, mem = sizer.streams()
        print(f"  streams: {n} keys, MEMORY USAGE {mem:,} B in all, {mem / max(n, 1):,.0f} B per session; "
              f"{(mem - streams_created) / max(args.commands - failed, 1):,.0f} B per command", flush=True)
        streams_before = mem

        failed = run_commands(st.url, token, sessions, "printf '%01000d\\n' 0", args.output_commands)
        sizer.step(f"{args.output_commands} commands printing 1001 bytes ({failed} failed)",
                   args.output_commands - failed, "command")
        n, mem = sizer.streams()
        print(f"  streams: {n} keys, MEMORY USAGE {mem:,} B in all, {mem / max(n, 1):,.0f} B per session; "
              f"{(mem - streams_before) / max(args.output_commands - failed, 1):,.0f} B per command", flush=True)

        flood = sessions[0]
        before = r.memory_usage(f"vterm:out:{flood}") or 0
        resp = http.post(f"/api/v1/sessions/{flood}/commands/",
                         json={"command": "head -c 8000000 /dev/zero | tr '\\0' x | fold -w 99", "wait": 120})
        sizer.step("one command printing 8 MB (output kept: VTERM_OUTPUT_LIMIT)", 1, "command")
        full = r.memory_usage(f"vterm:out:{flood}") or 0
        length = r.xlen(f"vterm:out:{flood}")
        print(f"  its stream: {before:,} B before, {full:,} B after ({length} entries): a full stream "
              f"(VTERM_STREAM_MAX_CHARS, VTERM_STREAM_MAXLEN); command status {resp.json()['status']}", flush=True)

        for sid in sessions:
            http.delete(f"/api/v1/sessions/{sid}/")
        time.sleep(2)
        sizer.step(f"{args.sessions} sessions ended", args.sessions, "session")

        out = st.config.manage("shell", "-c", PURGE).stdout.strip().splitlines()[-1]
        report = json.loads(out)
        deleted = sum(report["deleted"].values())
        print(f"purge of everything, aged past retention: {report['deleted']} in {report['batches']} batches, "
              f"{report['seconds']:.1f} s ({deleted / max(report['seconds'], 1e-9):,.0f} rows/s at the default "
              f"batch size and pause)", flush=True)
        sizer.step("after the purge", 1, "run")
        http.close()
    finally:
        st.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if db_name:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
