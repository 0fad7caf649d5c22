"""What one command costs each process, in figures that repeat on a busy machine: SQL statements,
Redis round trips and Python calls per command, on the web and on the backend worker.

    .venv/bin/python -m tests.bench.command_cost                      # SQLite, a private Redis
    .venv/bin/python -m tests.bench.command_cost --database-url postgres://postgres@127.0.0.1:5432/vterm_cost
    .venv/bin/python -m tests.bench.command_cost --calls 300 --top 25 --env VTERM_COMMAND_ROUTE=0

It starts a stack of its own (one backend, a private redis-server with AOF, as `make run`) whose web and
worker run under tests/bench/cost_probe.py, creates a session, runs --warmup commands, then counts --calls
`POST …/commands/ {"command": "true", "wait": 5}` one after another (--sessions K: K sessions at once,
each with its own client; the figures then depend on how much the processes batch). The threads that run
on a clock (heartbeats, stats) are left out and shown apart; the other threads' idle rate, measured over
a quiet spell as long as the load, is taken off. Wall-clock figures are not printed: CPU per command is
shown but, with cProfile on every thread, it is inflated and only good for comparing threads. With
Postgres, the database is dropped and made again (it must not be anyone else's).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import Api
from vterm_project.devstack import BIN, Stack, StackConfig, free_port

PROBE = [str(BIN / "python"), "-m", "tests.bench.cost_probe"]
# The backend's threads that run on a clock (heartbeats, stats, resource figures, the handoff check).
BACKGROUND = {"vterm-heartbeat", "vterm-heartbeat-redis", "vterm-resource-usage", "vterm-handoff"}


class ProbedConfig(StackConfig):
    """The stack's web and backends run under the probe; nothing else of it changes."""

    def processes(self):
        procs = super().processes()
        for p in procs:
            if p.name == "web":
                p.argv = [*PROBE, "--script", *p.argv]
            elif p.argv[:3] == [str(BIN / "python"), "-m", "celery"]:
                p.argv = [*PROBE, *p.argv[1:]]
        return procs


def _recreate_pg(url: str) -> None:
    base, name = url.rsplit("/", 1)
    for sql in (f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'):
        subprocess.run(["psql", f"{base}/postgres", "-q", "-c", sql], check=True)


class Probe:
    def __init__(self, directory: Path, roles: list[str]) -> None:
        self.dir, self.roles, self.gen = directory, roles, 0

    def take(self) -> dict[str, dict]:
        """Every probed process's counts now, by role (web, the backend id)."""
        self.gen += 1
        (self.dir / "ctl").write_text(str(self.gen))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {p.name.split(".")[0]: json.loads(p.read_text()) for p in self.dir.glob(f"*.*.{self.gen}.json")}
            if all(r in got for r in self.roles):
                return got
            time.sleep(0.1)
        raise RuntimeError(f"no counts from {set(self.roles) - set(got)}")


def _diff(a, b):
    """b - a, for the nested counters of a snapshot."""
    if isinstance(b, dict):
        return {k: _diff(a.get(k, 0 if not isinstance(v, dict) else {}), v) for k, v in b.items()}
    return b - a


def _minus(load, idle, scale: float):
    if isinstance(load, dict):
        return {k: _minus(v, idle.get(k, 0 if not isinstance(v, dict) else {}), scale) for k, v in load.items()}
    return load - idle * scale


def _flat(counts: dict[str, dict]) -> Counter:
    total: Counter = Counter()
    for per_thread in counts.values():
        total.update(per_thread)
    return total


def _inclusive(funcs: dict[str, float], edges: dict[str, dict[str, float]]) -> dict[str, float]:
    """Calls made inside each function, itself included: its own count plus, for each callee, the share
    of the callee's inclusive calls that its calls from here are of all the callee's calls. A call
    back into a function on the way (recursion) counts as its own calls only."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    done: dict[str, float] = {}
    on_way: set[str] = set()

    def total(f: str) -> float:
        if f in done:
            return done[f]
        if f in on_way:
            return max(funcs.get(f, 0.0), 0.0)
        on_way.add(f)
        n = max(funcs.get(f, 0.0), 0.0)
        t = n
        for callee, k in edges.get(f, {}).items():
            own = funcs.get(callee, 0.0)
            if k > 0 and own > 0:
                t += total(callee) * min(k / own, 1.0)
        on_way.discard(f)
        done[f] = t
        return t

    return {f: total(f) for f in funcs}


def report(role: str, load: dict, idle: dict, calls: int, top: int, out) -> dict:
    scale = load["seconds"] / max(idle["seconds"], 1e-9)
    net = _minus({k: v for k, v in load.items() if k != "seconds"}, {k: v for k, v in idle.items() if k != "seconds"},
                 scale)
    # Threads that run on a clock, not per command: left out of the figures (shown apart).
    for kind in ("sql", "redis", "calls", "cpu"):
        net[kind] = {g: v for g, v in net[kind].items() if g not in BACKGROUND}
    sql, rds = _flat(net["sql"]), _flat(net["redis"])
    summary = {"sql": sum(sql.values()) / calls, "redis": sum(rds.values()) / calls,
               "calls": sum(net["calls"].values()) / calls, "cpu_ms": sum(net["cpu"].values()) * 1000 / calls}
    print(f"\n== {role}: per command, less the idle rate: SQL {summary['sql']:.2f} (commits included), "
          f"Redis round trips {summary['redis']:.2f}, Python calls {summary['calls']:.0f}, "
          f"CPU {summary['cpu_ms']:.2f} ms{'' if summary['calls'] else ' (not profiled)'}", file=out)
    for title, counter in (("SQL", sql), ("Redis", rds)):
        for kind, n in sorted(counter.items(), key=lambda kv: -kv[1]):
            if abs(n / calls) >= 0.005:
                print(f"  {title:5} {n / calls:7.2f}  {kind}", file=out)
    print("  calls by thread (per command; idle rate per command taken off):", file=out)
    for group, n in sorted({**{g: 0 for g in net["cpu"]}, **net["calls"]}.items(), key=lambda kv: -kv[1]):
        if abs(n / calls) >= 1 or not n and abs(net["cpu"].get(group, 0) * 1000 / calls) >= 0.01:
            sq = sum(net["sql"].get(group, {}).values()) / calls
            rt = sum(net["redis"].get(group, {}).values()) / calls
            print(f"    {n / calls:8.0f} calls {sq:5.2f} SQL {rt:5.2f} Redis  "
                  f"{net['cpu'].get(group, 0) * 1000 / calls:5.2f} ms  {group}", file=out)
    bg = {k: {g: v for g, v in load[k].items() if g in BACKGROUND} for k in ("sql", "redis", "calls")}
    print(f"  left out, the clock's threads ({', '.join(sorted(bg['calls'])) or 'none'}), per command: "
          f"SQL {sum(_flat(bg['sql']).values()) / calls:.2f}, Redis {sum(_flat(bg['redis']).values()) / calls:.2f}, "
          f"calls {sum(bg['calls'].values()) / calls:.0f}", file=out)
    idle_sql = sum(_flat({g: v for g, v in idle["sql"].items() if g not in BACKGROUND}).values()) * scale / calls
    idle_calls = sum(v for g, v in idle["calls"].items() if g not in BACKGROUND) * scale / calls
    print(f"  idle rate of the other threads taken off, per command: SQL {idle_sql:.2f}, calls {idle_calls:.0f}",
          file=out)
    if top:
        print(f"  top {top} functions by calls per command:", file=out)
        for name, n in sorted(net["funcs"].items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {n / calls:8.1f}  {name}", file=out)
    if top:
        inclusive = _inclusive(net["funcs"], net["edges"])
        print(f"  top {top} of vterm's functions by calls inside them, callees included (per command; a callee's "
              "calls shared among its callers by how often each called it, as gprof does):", file=out)
        ours = [(k, v) for k, v in inclusive.items() if k.startswith(("sessions/", "workers/", "vterm_project/"))]
        for name, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
            print(f"    {n / calls:8.0f}  {net['funcs'].get(name, 0) / calls:5.2f}x  {name}", file=out)
    if top:
        print(f"  top {top} of vterm's functions by time inside them, callees included (ms per command, profiled):",
              file=out)
        ours = [(k, v) for k, v in net["times"].items() if k.startswith(("sessions/", "workers/", "vterm_project/"))]
        for name, t in sorted(ours, key=lambda kv: -kv[1])[:top]:
            print(f"    {t * 1000 / calls:7.3f}  {net['funcs'].get(name, 0) / calls:5.2f}x  {name}", file=out)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=1,
                        help="sessions driven at once, each by its own client (counts then depend on batching)")
    parser.add_argument("--top", type=int, default=15, help="functions shown by calls (0: none)")
    parser.add_argument("--database-url", help="Postgres (dropped and made again); default SQLite")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="the stack's environment")
    parser.add_argument("--no-calls", action="store_true",
                        help="no cProfile: no call counts, CPU per thread as it is (wall-clock dependent, noisy)")
    parser.add_argument("--json", help="write the per-command summary here")
    parser.add_argument("--keep", action="store_true", help="keep the data dir (logs, the probe's counts)")
    args = parser.parse_args()
    if args.database_url:
        _recreate_pg(args.database_url)
    tmp = Path(tempfile.mkdtemp(prefix="vterm-cost-"))
    probe_dir = tmp / "probe"
    probe_dir.mkdir()
    cfg = ProbedConfig(data_dir=tmp / "data", port=free_port(), backends=1, redis_port=free_port(), flower_port=None,
                       beat=False, backend_prefix="cost", database_url=args.database_url,
                       extra_env={"VTERM_COST_PROBE": str(probe_dir), "VTERM_COST_PROBE_CALLS": str(int(not args.no_calls)),
                                  "VTERM_MAX_SESSIONS_PER_USER": "0", "VTERM_COMMAND_RATE": "0",
                                  **dict(e.split("=", 1) for e in args.env)})
    stack = Stack(cfg)
    try:
        stack.start(timeout=120)
        token = stack.token("cost")
        clients = [Api(stack.url, token) for _ in range(args.sessions)]
        sids = [api.create_session()["id"] for api in clients]

        def run(n: int) -> None:
            for _ in range(args.calls // args.sessions):
                body = clients[n].run(sids[n], "true", wait=5)
                assert body["exit_code"] == 0, body

        for _ in range(args.warmup):
            for api, sid in zip(clients, sids):
                api.run(sid, "true", wait=5)
        probe = Probe(probe_dir, ["web", *cfg.backend_ids()])
        t0, s0 = time.monotonic(), probe.take()
        with ThreadPoolExecutor(args.sessions) as pool:
            list(pool.map(run, range(args.sessions)))
        t1, s1 = time.monotonic(), probe.take()
        time.sleep(t1 - t0)  # the idle spell, as long as the load
        t2, s2 = time.monotonic(), probe.take()
        args.calls = args.calls // args.sessions * args.sessions
        print(f"{args.calls} x `true` with wait on {args.sessions} session(s) at once, {'Postgres' if args.database_url else 'SQLite'}, "
              f"{' '.join(args.env) or 'default environment'}")
        summary = {}
        for role in s0:
            load = {**_diff(s0[role], s1[role]), "seconds": t1 - t0}
            idle = {**_diff(s1[role], s2[role]), "seconds": t2 - t1}
            summary[role] = report(role, load, idle, args.calls, args.top, sys.stdout)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
    finally:
        stack.stop()
        if args.keep:
            print(f"data dir kept: {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)



if __name__ == "__main__":
    main()
