"""Latency of one command over REST: `POST …/commands/` with {"command": "true", "wait": 5}, N calls in a row
on one session, against a stack of its own (a Redis database of its own, emptied afterwards). Prints median, p99 and max, and the
CPU time each process of the stack (with its children: tmux, bash) spent per command.

    .venv/bin/python -m tests.bench.command_latency [--calls 200] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import psutil

from tests.conftest import SCRATCH_REDIS_HELP, Api, make_stack, scratch_redis
from vterm_project.bench import terminal_figures as tf


def _cpu(proc: psutil.Process) -> float:
    """User + system seconds of a process and its children (the tmux server counts for its backend)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", help=SCRATCH_REDIS_HELP)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the stack, e.g. VTERM_HOT_CALLS=celery")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vterm-lat-") as tmp, scratch_redis(args.redis_url) as redis_url:
        env = dict(e.split("=", 1) for e in args.env)
        stack = make_stack(redis_url, Path(tmp), backends=1, prefix="lat", **env)
        stack.start()
        try:
            token = stack.token("latency")
            sid = Api(stack.url, token).create_session()["id"]
            tf.vterm_command_latency(stack.url, token, sid, args.warmup, warmup=0)
            procs = {name: psutil.Process(p.pid) for name, p in stack.procs.items()}
            cpu0 = {name: _cpu(p) for name, p in procs.items()}
            times = sorted(tf.vterm_command_latency(stack.url, token, sid, args.calls, warmup=0))
            p99 = times[max(0, int(round(0.99 * len(times))) - 1)]
            print(f"POST commands {{true, wait 5}}, {args.calls} calls on one session: "
                  f"median {statistics.median(times):.2f} ms, p99 {p99:.2f} ms, max {times[-1]:.2f} ms")
            print("CPU per command: " + ", ".join(
                f"{name} {(_cpu(p) - cpu0[name]) * 1000 / args.calls:.2f} ms" for name, p in procs.items()))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
