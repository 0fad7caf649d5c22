"""What a MB of output costs the server: CPU seconds of the web, the backend worker and Redis per MB
that a `cat` sends to a viewer that acknowledges every frame (issue 16, the output path).

    .venv/bin/python -m tests.bench.output_cpu [--mb 50] [--runs 3] [--env VTERM_OUTPUT_FLOOD_WAIT=0]

It starts a stack of its own (one Daphne, one backend worker, a private redis-server with AOF, as
`make run`), creates a session, writes a file of 100-byte lines in it and cats it --runs times to a
viewer over the WebSocket (vterm_project/bench/terminal_figures.py: it acks every frame and checks the
seq). CPU is user + system time from /proc (psutil) of each process group, taken just before the line is
typed and just after the end marker came: a figure that repeats on a busy machine, where MB/s does not
(shown too, for what it is worth). tmux and the shell are shown apart: they are not vterm's code.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from vterm_project.bench import terminal_figures as tf
from vterm_project.bench.resources import collect_groups, cpu_seconds, self_cpu_seconds
from vterm_project.devstack import Stack, StackConfig, free_port

SERVER = ("web", "workers", "redis")


class CountingTerminal(tf.VtermTerminal):
    """The bench's viewer, counting the output frames it got."""

    frames = 0

    def output(self, timeout: float) -> str:
        data = super().output(timeout)
        self.frames += 1
        return data


def system_seconds(groups) -> float:
    """System (kernel) CPU seconds of the server's processes: sockets, pipes, wake-ups."""
    total = 0.0
    for name in SERVER:
        for p in groups.groups[name]:
            try:
                total += p.cpu_times().system
            except psutil.NoSuchProcess:
                pass
    return total


def one_run(term: CountingTerminal, path: str, groups) -> dict:
    tf.settle(term)
    frames, snapshots = term.frames, term.snapshots
    sys0 = system_seconds(groups)
    cpu0, client0 = cpu_seconds(groups), self_cpu_seconds()
    t0 = time.perf_counter()
    term.type(f"cat {path}; {tf.END_COMMAND}\r")
    received = tf.until_mark(term, 600)
    seconds = time.perf_counter() - t0
    cpu1, client1 = cpu_seconds(groups), self_cpu_seconds()
    sys1 = system_seconds(groups)
    mb = received / 1e6
    ms_per_mb = {g: (cpu1[g] - cpu0[g]) * 1000 / mb for g in cpu0}
    ms_per_mb["server"] = sum(ms_per_mb[g] for g in SERVER)
    ms_per_mb["client"] = (client1 - client0) * 1000 / mb
    ms_per_mb["server_system"] = (sys1 - sys0) * 1000 / mb
    return {"mb": mb, "seconds": seconds, "frames": term.frames - frames, "ms_per_mb": ms_per_mb,
            "snapshots": term.snapshots - snapshots, "seq_breaks": term.seq_breaks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="the stack's environment")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vterm-outcpu-"))
    cfg = StackConfig(data_dir=tmp / "data", port=free_port(), backends=1, redis_port=free_port(), flower_port=None,
                      beat=False, backend_prefix="outcpu",
                      extra_env={"VTERM_MAX_SESSIONS_PER_USER": "0", **dict(e.split("=", 1) for e in args.env)})
    stack = Stack(cfg)
    try:
        stack.start(timeout=120)
        token = stack.token("outcpu")
        with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            session = http.post("/api/v1/sessions/", json={"cols": 120, "rows": 40}).json()
        term = CountingTerminal(stack.url, token, session["id"])
        path = "$HOME/.vterm-output-cpu.txt"
        tf.run_line(term, tf.make_file_command(path, args.mb), timeout=300)
        groups = collect_groups(cfg.data_dir, worker_pids=[stack.procs[b].pid for b in cfg.backend_ids()],
                                web_pids=[stack.procs["web"].pid], redis_pids=[stack.procs["redis"].pid])
        print(f"cat of a {args.mb:g} MB file to a viewer that acks every frame, {args.runs} runs; "
              f"{' '.join(args.env) or 'default environment'}")
        print("CPU ms per MB of output:  server = web + workers + redis (kernel: its system time);  "
              "tmux, shells, client apart")
        runs = []
        for i in range(args.runs):
            r = one_run(term, path, groups)
            runs.append(r)
            c = r["ms_per_mb"]
            print(f"  run {i + 1}: server {c['server']:6.1f}  (web {c['web']:6.1f}  workers {c['workers']:6.1f}  "
                  f"redis {c['redis']:5.1f}; kernel {c['server_system']:5.1f})  tmux {c['tmux']:5.1f}  shells {c['shells']:5.1f}  "
                  f"client {c['client']:6.1f} | {r['mb']:.1f} MB in {r['frames']} frames "
                  f"({r['mb'] * 1e3 / max(r['frames'], 1):.1f} KB each), {r['mb'] / r['seconds']:.1f} MB/s wall, "
                  f"snapshots {r['snapshots']}, seq breaks {r['seq_breaks']}")
        med = {g: statistics.median(r["ms_per_mb"][g] for r in runs) for g in runs[0]["ms_per_mb"]}
        print(f"  median: server {med['server']:.1f} ms/MB (web {med['web']:.1f}, workers {med['workers']:.1f}, "
              f"redis {med['redis']:.1f}); frames {statistics.median(r['frames'] for r in runs):.0f}, "
              f"{statistics.median(r['mb'] / r['seconds'] for r in runs):.1f} MB/s wall")
        tf.run_line(term, f"rm -f {path}")
        term.close()
    finally:
        stack.stop()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
