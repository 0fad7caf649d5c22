"""What holding N idle sessions costs: CPU of the backend worker, its tmux servers, the shells and the
web while nothing runs, as % of one core (issue 16: cost as sessions grow), grouped as the bench groups
them (vterm_project/bench/resources.py).

    .venv/bin/python -m tests.bench.idle_cpu [--sessions 1000] [--seconds 20] [--redis-url URL]

A stack of its own (one backend), N sessions created 16 at a time, --settle seconds, then user + system
CPU seconds of each process over --seconds (psutil). CPU time, not the wall clock: it repeats on a
shared machine within about 15 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import SCRATCH_REDIS_HELP, Api, make_stack, scratch_redis
from vterm_project.bench.resources import collect_groups, cpu_seconds


def measure(redis_url: str, sessions: int, seconds: float, settle: float = 10.0,
            **env) -> dict[str, tuple[float, int]]:
    """Each group's CPU while ``sessions`` sessions are idle: {group: (% of one core, processes)}."""
    with tempfile.TemporaryDirectory(prefix="vterm-idle-") as tmp:
        data_dir = Path(tmp)
        stack = make_stack(redis_url, data_dir, backends=1, prefix="idle", VTERM_BACKEND_CAPACITY=str(sessions + 10),
                           VTERM_MAX_SESSIONS_PER_USER="0", VTERM_COMMAND_RATE="0", **env)
        stack.start()
        try:
            api = Api(stack.url, stack.token("idle"))
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda _: api.create_session(), range(sessions)))
            time.sleep(settle)
            pids = {name: proc.pid for name, proc in stack.procs.items()}  # the web and the backend worker
            groups = collect_groups(data_dir, [pid for name, pid in pids.items() if not name.startswith("web")],
                                    [pid for name, pid in pids.items() if name.startswith("web")], [])
            before = cpu_seconds(groups)
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            after = cpu_seconds(groups)
            return {name: (100 * (after[name] - before[name]) / elapsed, len(procs))
                    for name, procs in groups.groups.items() if procs}
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", help=SCRATCH_REDIS_HELP)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--settle", type=float, default=10, help="seconds after the sessions are made")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment of the stack")
    args = parser.parse_args()
    with scratch_redis(args.redis_url) as redis_url:
        figures = measure(redis_url, args.sessions, args.seconds, args.settle,
                          **dict(e.split("=", 1) for e in args.env))
    for name, (percent, n) in sorted(figures.items()):
        print(f"{name:<8} {percent:6.1f} % of a core  ({n} processes, {args.sessions} idle sessions)")


if __name__ == "__main__":
    main()
