"""Run each fault N times against real stacks and print the table for issue 5.

    .venv/bin/python -m tests.faults.report --runs 5

Columns: injections; sessions recovered (active again afterwards) of those hit;
commands acknowledged (201) / lost (acknowledged, never ended) / interrupted (ended
``interrupted``, with a reason); time to recover, median and max, in seconds (from
the fault until the sessions served again; for Redis, from its return).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import scenarios
from .harness import FaultStack, Outcome, PrivateRedis

# (stack settings, [(name, scenario)]): one stack per group, started once for all runs.
GROUPS = [
    ({"prefix": "rr", "VTERM_HEARTBEAT_TTL": 60},
     [("worker", scenarios.worker_crash), ("tmux", scenarios.tmux_killed)]),
    ({"prefix": "rl"},
     [("loss", scenarios.backend_lost), ("late", scenarios.worker_returns_late),
      ("paused", scenarios.worker_paused), ("all-lost", scenarios.every_backend_lost)]),
    ({"prefix": "rw", "VTERM_HEARTBEAT_TTL": 10},
     [("web", scenarios.web_restart), ("redis-restart", scenarios.redis_restart),
      ("redis-pause", scenarios.redis_pause)]),
]


def run(runs: int, only: set[str] | None) -> list[tuple[str, list[Outcome], list[str]]]:
    rows = []
    for env, cases in GROUPS:
        cases = [c for c in cases if not only or c[0] in only]
        if not cases:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="vterm-faults-"))
        redis = PrivateRedis(tmp)
        redis.start()
        fs = FaultStack(redis.url, tmp / "stack", **env)
        try:
            fs.start()
            for name, scenario in cases:
                outcomes, errors = [], []
                for i in range(runs):
                    t = time.monotonic()
                    try:
                        args = (fs, redis) if name.startswith("redis") else (fs,)
                        outcomes.append(scenario(*args))
                    except Exception as exc:  # noqa: BLE001 - a failed injection is a row of the table
                        errors.append(f"run {i + 1}: {exc.__class__.__name__}: {exc}")
                        traceback.print_exc()
                    print(f"  {name} run {i + 1}/{runs}: {time.monotonic() - t:.1f}s", file=sys.stderr, flush=True)
                rows.append((name, outcomes, errors))
        finally:
            fs.stop()
            redis.resume()
            redis.stop()
            shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows) -> str:
    out = [("| fault | injections | sessions recovered | commands acknowledged | lost | interrupted "
            "| recover median s | recover max s |"),
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for _name, outcomes, errors in rows:
        if not outcomes:
            out.append(f"| {_name} | {len(errors)} failed | | | | | | |")
            continue
        times = [o.recover_s for o in outcomes]
        injections = len(outcomes) + len(errors)
        out.append(
            f"| {outcomes[0].fault} | {injections}{f' ({len(errors)} failed)' if errors else ''} "
            f"| {sum(o.recovered for o in outcomes)}/{sum(o.sessions for o in outcomes)} "
            f"| {sum(o.acknowledged for o in outcomes)} | {sum(o.lost for o in outcomes)} "
            f"| {sum(o.interrupted for o in outcomes)} | {statistics.median(times):.2f} | {max(times):.2f} |")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="injections of each fault")
    parser.add_argument("--only", nargs="*", help="fault names: worker tmux loss late paused all-lost web redis-restart redis-pause")
    args = parser.parse_args()
    rows = run(args.runs, set(args.only) if args.only else None)
    print(table(rows))
    for name, outcomes, errors in rows:
        for e in errors:
            print(f"{name}: {e}")
        notes = sorted({n for o in outcomes for n in o.notes})
        for n in notes[:5]:
            print(f"{name}: {n}")


if __name__ == "__main__":
    main()
