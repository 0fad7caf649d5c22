"""A model of the output thread's pacing (workers/output_frames.FloodPacer): sends per chunk of output
and how long a chunk waits, for small chunks coming at random (Poisson) over N sessions.

    .venv/bin/python -m tests.bench.pacer_model [--sessions 8] [--rates 50,100,200,400,800]

No stack, no clock: the figures do not depend on the machine, where tests/bench/command_cost.py's
output-thread counts move with the rate the machine reaches. Each send takes --send-ms (its pipeline);
the thread looks again when the pacer says. "session" is the rule before the output thread paced as a
whole (a session quiet for the interval sent at once, whatever the thread was doing), for comparison.
"""

from __future__ import annotations

import argparse
import random

from workers.output_frames import FloodPacer

INTERVAL = 0.005
CHUNK = 100  # bytes: an echo, a prompt, a short command's output; far below a flood


class SessionRule:
    """Before: each session paced alone (at once if it sent nothing for the interval)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def plan(self, pending: dict[str, int], now: float) -> tuple[dict[str, int], float | None]:
        due = {name: self._last.get(name, float("-inf")) + INTERVAL for name in pending}
        send = {name: pending[name] for name, at in due.items() if now >= at}
        left = [at for name, at in due.items() if name not in send]
        return send, (min(left) if left else None)

    def sent(self, name: str, size: int, now: float) -> None:
        self._last[name] = now


def thread_rule() -> FloodPacer:
    """Now: the output thread paced as a whole (the worker's settings' defaults)."""
    return FloodPacer(interval=INTERVAL, flood_bytes=16384, flood_wait=0.02, frame_max=65536)


def simulate(pacer, rate: float, sessions: int, chunks: int, send_s: float,
             seed: int = 1) -> tuple[float, list[float]]:
    """(sends per chunk, each chunk's wait in seconds)."""
    rnd = random.Random(seed)
    t, arrivals = 0.0, []
    for _ in range(chunks):
        t += rnd.expovariate(rate)
        arrivals.append((t, f"s{rnd.randrange(sessions)}"))
    pending: dict[str, int] = {}
    since: dict[str, list[float]] = {}
    i, now, sends, waits = 0, 0.0, 0, []
    while i < len(arrivals) or pending:
        while i < len(arrivals) and arrivals[i][0] <= now:
            at, name = arrivals[i]
            pending[name] = pending.get(name, 0) + CHUNK
            since.setdefault(name, []).append(at)
            i += 1
        send, later = pacer.plan(pending, now)
        if send:
            for name, size in send.items():
                pacer.sent(name, size, now)
                del pending[name]
                waits += [now - at for at in since.pop(name)]
            sends += 1
            now += send_s
            continue
        upcoming = arrivals[i][0] if i < len(arrivals) else float("inf")
        now = upcoming if later is None else min(upcoming, later)
    return sends / chunks, sorted(waits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--rates", default="50,100,200,400,800", help="chunks per second, all sessions")
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--send-ms", type=float, default=0.7, help="one send's pipeline")
    args = parser.parse_args()
    print(f"{args.sessions} sessions, chunks of {CHUNK} bytes, sends of {args.send_ms} ms,"
          f" interval {INTERVAL * 1e3} ms")
    print(f"{'chunks/s':>8}  {'rule':<8} {'sends/chunk':>11} {'wait p50 ms':>11} {'p99 ms':>7}")
    for rate in (float(r) for r in args.rates.split(",")):
        for rule, pacer in (("session", SessionRule()), ("thread", thread_rule())):
            per_chunk, waits = simulate(pacer, rate, args.sessions, args.chunks, args.send_ms / 1e3)
            p50, p99 = waits[len(waits) // 2] * 1e3, waits[int(len(waits) * 0.99)] * 1e3
            print(f"{rate:8.0f}  {rule:<8} {per_chunk:11.2f} {p50:11.2f} {p99:7.2f}")


if __name__ == "__main__":
    main()
