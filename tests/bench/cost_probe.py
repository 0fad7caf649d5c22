"""Run a stack process (daphne, a Celery worker) with counters on it, for tests/bench/command_cost.py.

    python -m tests.bench.cost_probe --script .venv/bin/daphne -b 127.0.0.1 -p 8000 vterm_project.asgi:application
    python -m tests.bench.cost_probe -m celery -A vterm_project worker ...

Counts, per thread (its name, digits dropped), from the moment the process starts:
- SQL statements, by verb and table (every connection's execute wrappers), and COMMITs;
- Redis round trips (each packed write to a server: a command, or a pipeline's whole batch), by the
  command names sent, sync and asyncio clients alike (the channel layer, kombu);
- Python function calls (cProfile on every thread, builtins included) and the thread's CPU time.

Every $VTERM_COST_PROBE/ctl change (a generation number written by the bench) makes the process write
what it counted so far to $VTERM_COST_PROBE/<role>.<pid>.<generation>.json; the bench subtracts two.
Measurement only: nothing here is imported by the service.
"""

from __future__ import annotations

import _thread
import cProfile
import json
import os
import re
import runpy
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

_lock = threading.Lock()
_sql: dict[str, Counter] = defaultdict(Counter)
_redis: dict[str, Counter] = defaultdict(Counter)
_profiles: list[tuple[threading.Thread, cProfile.Profile]] = []
_TABLE = re.compile(r'\b(?:FROM|INTO|UPDATE)\s+"?([A-Za-z0-9_]+)"?', re.IGNORECASE)
_DIGITS = re.compile(r"[-_]?\d+(_\d+)?$")


_groups: dict[int, str] = {}  # thread ident -> its group, filled by the threads' bootstrap


def _group(name: str | None = None) -> str:
    if name is None:
        return _groups.get(_thread.get_ident(), "?")
    return _DIGITS.sub("", name) or "?"


def _sql_kind(sql: str) -> str:
    words = sql.split(None, 1)
    verb = words[0].upper() if words else "?"
    table = _TABLE.search(sql)
    return f"{verb} {table.group(1)}" if table and verb in ("SELECT", "INSERT", "UPDATE", "DELETE") else verb


def _sql_wrapper(execute, sql, params, many, context):
    with _lock:
        _sql[_group()][_sql_kind(sql) + (" (many)" if many else "")] += 1
    return execute(sql, params, many, context)


def _resp_names(packed) -> str:
    """The command names in a packed RESP write (one command, or a pipeline's)."""
    data = packed if isinstance(packed, (bytes, str)) else b"".join(
        p if isinstance(p, bytes) else bytes(p) for p in packed)
    if isinstance(data, str):
        data = data.encode()
    names, i = [], 0
    try:
        while i < len(data) and data[i:i + 1] == b"*":
            end = data.index(b"\r\n", i)
            argc, i = int(data[i + 1:end]), end + 2
            for n in range(argc):
                end = data.index(b"\r\n", i)
                size = int(data[i + 1:end])
                arg, i = data[end + 2:end + 2 + size], end + 4 + size
                if n == 0:
                    names.append(arg.decode("latin-1").upper())
    except ValueError:
        names.append("?")
    if len(names) > 1:
        seen: dict[str, int] = {}
        for name in names:
            seen[name] = seen.get(name, 0) + 1
        return "pipeline[" + " ".join(f"{k}x{v}" if v > 1 else k for k, v in seen.items()) + "]"
    return names[0] if names else "?"


def _install_db() -> None:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.signals import connection_created

    def created(sender, connection, **kwargs):
        if _sql_wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(_sql_wrapper)
        cls = type(connection)
        if connection.vendor == "postgresql" and "_probe_set_autocommit" not in cls.__dict__:
            set_autocommit = cls._set_autocommit  # the backend's own (PostgreSQL has one)

            def counted_set_autocommit(self, autocommit):
                if not autocommit:  # psycopg sends BEGIN with the next statement
                    with _lock:
                        _sql[_group()]["BEGIN (implicit)"] += 1
                return set_autocommit(self, autocommit)

            cls._set_autocommit = counted_set_autocommit
            cls._probe_set_autocommit = True

    connection_created.connect(created, weak=False)
    commit = BaseDatabaseWrapper._commit

    def counted_commit(self):
        with _lock:
            _sql[_group()]["COMMIT"] += 1
        return commit(self)

    BaseDatabaseWrapper._commit = counted_commit


def _install_redis() -> None:
    import redis.asyncio.connection as aconn
    import redis.connection as conn

    send = conn.AbstractConnection.send_packed_command

    def counted_send(self, command, check_health=True):
        names = _resp_names(command)
        with _lock:
            _redis[_group()][names] += 1
        return send(self, command, check_health)

    conn.AbstractConnection.send_packed_command = counted_send
    asend = aconn.AbstractConnection.send_packed_command

    async def acounted_send(self, command, check_health=True):
        names = _resp_names(command)
        with _lock:
            _redis[_group()][names] += 1
        return await asend(self, command, check_health)

    aconn.AbstractConnection.send_packed_command = acounted_send


def _install_profiles() -> None:
    inner = threading.Thread._bootstrap_inner

    def profiled(self):
        prof = cProfile.Profile()
        with _lock:
            _profiles.append((self, prof))
        _groups[_thread.get_ident()] = _group(self.name)
        prof.enable()
        try:
            inner(self)
        finally:
            prof.disable()

    threading.Thread._bootstrap_inner = profiled
    main = cProfile.Profile()
    _profiles.append((threading.main_thread(), main))
    _groups[_thread.get_ident()] = "MainThread"
    main.enable()


def _is_probe(code) -> bool:
    return getattr(code, "co_filename", None) == __file__


def _install_thread_names() -> None:
    inner = threading.Thread._bootstrap_inner

    def named(self):
        with _lock:
            _profiles.append((self, None))
        _groups[_thread.get_ident()] = _group(self.name)
        inner(self)

    threading.Thread._bootstrap_inner = named
    _profiles.append((threading.main_thread(), None))
    _groups[_thread.get_ident()] = "MainThread"


def _label(code) -> str:
    if isinstance(code, str):
        return code
    path = code.co_filename
    for marker in ("site-packages/", os.getcwd() + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{code.co_firstlineno}({code.co_name})"


def snapshot() -> dict:
    import psutil

    cpu = {}
    try:
        cpu = {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    except psutil.Error:
        pass
    with _lock:
        profiles = list(_profiles)
        sql = {g: dict(c) for g, c in _sql.items()}
        rds = {g: dict(c) for g, c in _redis.items()}
    calls: Counter = Counter()
    funcs: Counter = Counter()
    thread_cpu: Counter = Counter()
    times: Counter = Counter()
    edges: dict[str, Counter] = defaultdict(Counter)
    for thread, prof in profiles:
        group = _group(thread.name)
        thread_cpu[group] += cpu.get(thread.native_id, 0.0)
        for entry in prof.getstats() if prof is not None else ():
            calls[group] += entry.callcount
            label = _label(entry.code)
            funcs[label] += entry.callcount
            times[label] += entry.totaltime
            if not _is_probe(entry.code):
                for sub in entry.calls or ():
                    if not _is_probe(sub.code):
                        edges[label][_label(sub.code)] += sub.callcount
            if _is_probe(entry.code):
                # The probe's own calls (and the builtins they call) are not the service's.
                calls[group] -= entry.callcount
                funcs[label] -= entry.callcount
                for sub in entry.calls or ():
                    if isinstance(sub.code, str):  # a builtin it called; its Python callees are the service's
                        calls[group] -= sub.callcount
                        funcs[_label(sub.code)] -= sub.callcount
    return {"sql": sql, "redis": rds, "calls": dict(calls), "funcs": {k: v for k, v in funcs.items() if v},
            "times": {k: v for k, v in times.items() if v > 1e-4},
            "edges": {k: dict(v) for k, v in edges.items()}, "cpu": dict(thread_cpu),
            "process_cpu": time.process_time()}


def _watch(directory: Path, role: str) -> None:
    seen = None
    ctl = directory / "ctl"
    while True:
        try:
            gen = ctl.read_text().strip()
        except OSError:
            gen = None
        if gen and gen != seen:
            seen = gen
            out = directory / f"{role}.{os.getpid()}.{gen}.json"
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot()))
            tmp.rename(out)
        time.sleep(0.1)


def main() -> None:
    args = sys.argv[1:]
    directory = Path(os.environ["VTERM_COST_PROBE"])
    role = os.environ.get("VTERM_BACKEND_ID") or os.environ.get("VTERM_COST_ROLE", "web")
    threading.Thread(target=_watch, args=(directory, role), name="cost-probe", daemon=True).start()
    _install_db()
    _install_redis()
    if os.environ.get("VTERM_COST_PROBE_CALLS", "1") != "0":
        _install_profiles()
    else:  # CPU per thread without cProfile's cost: threads still named for the figures
        _install_thread_names()
    if args[0] == "-m":
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "--script":
        sys.argv = args[1:]
        runpy.run_path(args[1], run_name="__main__")
    else:
        raise SystemExit("usage: cost_probe (-m MODULE | --script PATH) ARGS...")


if __name__ == "__main__":
    main()
