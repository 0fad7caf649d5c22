"""Figures for the WebSocket terminal (issue 3), measured against a live stack.

    .venv/bin/python -m tests.bench.ws_figures [--keys 200] [--mb 50]

Starts its own stack (Daphne, one backend worker, tmux; Redis from $REDIS_URL or
127.0.0.1:6379, its keys under a prefix of its own) unless --url and --token are given, then measures:

- keystroke → echo: one character sent as an `input` frame, until the output frame that
  echoes it arrives (readline at a bash prompt), for --keys keystrokes: median and p99;
- output rate: `cat` of a --mb MB text file in the session, as a WebSocket client that
  acknowledges every frame receives it: MB of output frames per second, from the first
  output frame after the `run` to the command's final `command` frame.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tests.ws_viewer import Viewer


def keystroke_echo(viewer: Viewer, n: int) -> list[float]:
    times = []
    for _ in range(n):
        before = len(viewer.outputs)
        t0 = time.perf_counter()
        viewer.send(type="input", data="x")
        viewer.until(lambda f, before=before: f["type"] == "output" and "x" in f["data"]
                     and len(viewer.outputs) > before, 30)
        times.append((time.perf_counter() - t0) * 1000)
    viewer.send(type="input", keys=["C-u"])
    return times


def output_rate(viewer: Viewer, path: str) -> tuple[float, int, int, dict]:
    viewer.send(type="run", command=f"cat {path}", ref="cat")
    viewer.until(lambda f: f["type"] == "command" and f.get("ref") == "cat")  # queued
    first = len(viewer.outputs)
    viewer.until(lambda f: f["type"] == "output", 60)
    t0 = time.perf_counter()
    snapshots_before = sum(1 for f in viewer.frames if f["type"] == "snapshot")
    end = viewer.command_end("cat", 3600)
    elapsed = time.perf_counter() - t0
    received = sum(len(d.encode()) for _, d in viewer.outputs[first:])
    snapshots = sum(1 for f in viewer.frames if f["type"] == "snapshot") - snapshots_before
    return elapsed, received, snapshots, end["command"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()

    stack = None
    tmp = Path(tempfile.mkdtemp(prefix="vterm-wsbench-"))
    if args.url and args.token:
        url, token = args.url, args.token
    else:
        from tests.conftest import make_stack

        redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        stack = make_stack(redis_url, tmp, backends=1, prefix="wsbench",
                           VTERM_REDIS_PREFIX=f"wsbench{uuid.uuid4().hex[:6]}:").start()
        url, token = stack.url, stack.token("bench")
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        session = http.post("/api/v1/sessions/", json={"cols": 120, "rows": 40}).json()
        viewer = Viewer(url, session["id"], token=token)
        viewer.send(type="run", command="true", ref="warm")
        viewer.command_end("warm")

        times = keystroke_echo(viewer, args.keys)
        print(f"keystroke -> echo over WebSocket, {len(times)} keystrokes: "
              f"median {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms, "
              f"max {max(times):.2f} ms")

        data = tmp / "50mb.txt"
        line = ("0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:99] + "\n"
        with open(data, "w") as f:
            f.write(line * (args.mb * 1_000_000 // len(line)))
        size = data.stat().st_size
        elapsed, received, snapshots, cmd = output_rate(viewer, str(data))
        print(f"cat of a {size / 1e6:.0f} MB file: {received / 1e6:.1f} MB of output frames in {elapsed:.2f} s "
              f"= {received / 1e6 / elapsed:.1f} MB/s (command {cmd['status']}, snapshots {snapshots}, "
              f"seq breaks {len(viewer.breaks)})")
        viewer.close()
        http.delete(f"/api/v1/sessions/{session['id']}/")
    finally:
        if stack:
            stack.stop()


if __name__ == "__main__":
    main()
