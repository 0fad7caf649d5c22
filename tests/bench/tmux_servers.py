"""What tmux spends per command when a backend's shells are spread over several tmux servers
(workers/tmux/pool.py, VTERM_TMUX_WINDOWS_PER_SERVER), in CPU time, not wall time: the machine is
shared and its latencies say little.

For each number of shells N and each shells-per-server S (0: one server for all), a TmuxPool is
started in a fresh directory, N idle bash shells are made through it (one after another), then
--commands `true` are typed as the backend types them (a bracketed paste), round-robin over the
shells, each waited for. Counted from /proc/PID/stat (utime + stime) of every tmux server of the
pool and of this process (the driver's reader threads and the ticker): per shell created, per
command, and per second idle.

    .venv/bin/python -m tests.bench.tmux_servers --shells 300,1000 --per-server 0,100,200 \\
        --commands 1000 --idle 5 --json /tmp/tmux-servers.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from tests.bench.tmux_cost import _env, _Listener
from workers.tmux.pool import TmuxPool

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int | str) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Meter:
    """CPU seconds spent by the pool's tmux servers and by this process since the last take()."""

    def __init__(self, pool: TmuxPool) -> None:
        self.pool = pool
        self.tmux: dict[int, float] = {}
        self.own = cpu_s("self")

    def start(self) -> None:
        self.tmux = {p: cpu_s(p) for p in self.pool.server_pids()}
        self.own = cpu_s("self")

    def take(self) -> tuple[float, float]:
        now = {p: cpu_s(p) for p in self.pool.server_pids()}
        tmux = sum(v - self.tmux.get(p, 0.0) for p, v in now.items())  # a server started meanwhile: all of it
        own = cpu_s("self") - self.own
        self.tmux, self.own = now, cpu_s("self")
        return tmux, own


def measure(shells: int, per_server: int, commands: int, idle: float) -> dict:
    tmp = tempfile.mkdtemp(prefix="vterm-tmuxsrv-")
    listener = _Listener()
    pool = TmuxPool(os.path.join(tmp, "t"), listener, shell_env=_env(), per_server=per_server,
                    source_user_bashrc=False)
    try:
        pool.start()
        meter = Meter(pool)
        meter.start()
        t0 = time.monotonic()
        for i in range(shells):
            pool.create_shell(f"s{i}", cwd=tmp, env={}, cols=120, rows=40)
        create_s = time.monotonic() - t0
        create_tmux, _ = meter.take()
        time.sleep(1)  # the last shells' start settles
        meter.start()
        time.sleep(idle)
        idle_tmux, idle_own = meter.take()
        meter.start()
        for i in range(commands):
            cid = f"c{i}"
            pool.run(f"s{i % shells}", cid, "true", timeout=60)
            listener.wait(cid, 60)
        cmd_tmux, cmd_own = meter.take()
        return {"shells": shells, "per_server": per_server, "servers": len(pool.drivers),
                "create_s": round(create_s, 2), "create_tmux_ms_per_shell": round(create_tmux / shells * 1e3, 3),
                "tmux_us_per_cmd": round(cmd_tmux / commands * 1e6), "own_us_per_cmd": round(cmd_own / commands * 1e6),
                "tmux_idle_us_per_s": round(idle_tmux / idle * 1e6), "own_idle_us_per_s": round(idle_own / idle * 1e6),
                "loadavg": os.getloadavg()[0]}
    finally:
        pool.kill_server()
        pool.close()
        shutil.rmtree(tmp, ignore_errors=True)


HEADER = ("shells  cap servers create s  tmux ms/shell  tmux µs/cmd  own µs/cmd  tmux idle µs/s  own idle µs/s"
          "  load")


def row(r: dict) -> str:
    return (f"{r['shells']:>6} {r['per_server']:>4} {r['servers']:>7} {r['create_s']:>8.1f} "
            f"{r['create_tmux_ms_per_shell']:>14.2f} {r['tmux_us_per_cmd']:>12} {r['own_us_per_cmd']:>11} "
            f"{r['tmux_idle_us_per_s']:>15} {r['own_idle_us_per_s']:>14} {r['loadavg']:>5.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shells", default="300,1000")
    ap.add_argument("--per-server", default="0,100,200")
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    rows = []
    print(HEADER, flush=True)
    for _ in range(args.repeat):
        for shells in (int(n) for n in args.shells.split(",")):
            for cap in (int(n) for n in args.per_server.split(",")):
                r = measure(shells, cap, args.commands, args.idle)
                rows.append(r)
                print(row(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
