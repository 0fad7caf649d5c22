"""Figures for the WebSocket terminal (issue 3), measured against a live stack.

    .venv/bin/python -m tests.bench.ws_figures [--keys 200] [--mb 50]

Starts its own stack (Daphne, one backend worker, tmux; a free database of the Redis at
127.0.0.1:6379, emptied afterwards, or $REDIS_URL's, which it empties too) unless --url and --token are given, then measures
keystroke → echo and the output rate of a `cat` as `manage.py vterm_bench --peers` does for vterm
(vterm_project/bench/terminal_figures.py), without the peers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from vterm_project.bench import terminal_figures as tf
from vterm_project.bench.report import percentile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--url")
    parser.add_argument("--token")
    args = parser.parse_args()

    # What this run starts ends in reverse, however it ends: the stack, then its Redis database.
    with contextlib.ExitStack() as scratch:
        if args.url and args.token:
            url, token = args.url, args.token
        else:
            from tests.conftest import make_stack, scratch_redis

            redis_url = scratch.enter_context(scratch_redis(os.environ.get("REDIS_URL")))
            stack = make_stack(redis_url, Path(tempfile.mkdtemp(prefix="vterm-wsbench-")), backends=1,
                               prefix="wsbench")
            scratch.callback(stack.stop)
            url, token = stack.start().url, stack.token("bench")
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        session = http.post("/api/v1/sessions/", json={"cols": 120, "rows": 40}).json()
        term = tf.VtermTerminal(url, token, session["id"])
        times = sorted(tf.keystroke_echo(term, args.keys))
        print(f"keystroke -> echo over WebSocket, {len(times)} keystrokes: "
              f"median {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms, max {times[-1]:.2f} ms")
        path = "$HOME/.vterm-ws-figures.txt"
        tf.run_line(term, tf.make_file_command(path, args.mb), timeout=300)
        out = tf.output_rate(term, path)
        print(f"cat of a {args.mb} MB file: {out['mb']:.1f} MB of output frames in {out['seconds']:.2f} s "
              f"= {out['mb_per_s']:.1f} MB/s (snapshots {out['snapshots']}, seq breaks {out['seq_breaks']})")
        tf.run_line(term, f"rm -f {path}")
        term.close()
        http.delete(f"/api/v1/sessions/{session['id']}/")


if __name__ == "__main__":
    main()
