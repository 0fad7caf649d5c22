"""What one tmux server spends, in instructions, as its windows grow: per idle second, per command
typed, per resource-sampler call (`list-panes -s`), with N idle bash shells made by vterm's own
TmuxDriver (its tmux.conf, its new-window, its control-mode client, its bracketed paste).

The tmux server runs under `valgrind --tool=callgrind` (instrumentation off while the shells are
made, on for each phase, zeroed and dumped between them with callgrind_control), so the figures
are instruction counts, not wall time: they hold on a busy machine. Give `--tmux` a build with
symbols (Debian's is stripped) to have `callgrind_annotate` name the functions:

    apt-get source tmux && (cd tmux-3.3a && ./configure CFLAGS="-O2 -g" && make)
    python -m tests.bench.tmux_cost --tmux tmux-3.3a/tmux --windows 1,100,1000 --out /tmp/tmux-cost

The phases: `idle` (nothing typed for --idle seconds), `command` (--commands `true` typed one
after another, each into the next shell round-robin, as a bench spreads them, waiting for each
to end), `list-panes` (--samples calls of TmuxDriver.shell_pids, what the resource sampler runs
every 5 s), `create` (the last --creates of the N shells made). Callgrind takes a command only when
tmux runs: each zero/dump is followed by one `display-message` on the control connection. tmux has
no timer with vterm's configuration, so the idle phase counts only those two, and its count is
taken off every other phase's.

`--native` runs tmux without valgrind and counts its CPU time (/proc/PID/schedstat) instead: noisy
on a shared machine, but it shows what the instruction counts mean in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from workers.tmux.driver import TMUX_CONF, TmuxDriver


def _env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
            "TERM": "xterm-256color", "LANG": "C.UTF-8"}


class _Listener:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.finished: dict[str, int | None] = {}

    def shell_output(self, name: str, data: bytes) -> None:
        pass

    def command_started(self, name: str, command_id: str, started_at: float) -> None:
        pass

    def command_finished(self, name: str, result) -> None:
        with self.cond:
            self.finished[result.command_id] = result.exit_code
            self.cond.notify_all()

    def wait(self, command_id: str, timeout: float) -> int | None:
        with self.cond:
            if not self.cond.wait_for(lambda: command_id in self.finished, timeout):
                raise RuntimeError(f"command {command_id} did not finish in {timeout} s")
            return self.finished[command_id]

    def shell_exited(self, name: str, reason: str) -> None:
        pass

    def server_lost(self) -> None:
        pass


class _Server:
    """A tmux server in the foreground (-D) with vterm's tmux.conf: under callgrind, or (native) as it is,
    measured by the CPU time the kernel counts for it (/proc/PID/schedstat, nanoseconds)."""

    def __init__(self, tmux: str, tmp: str, native: bool = False) -> None:
        self.tmp = tmp
        self.native = native
        self.sock = os.path.join(tmp, "tmux.sock")
        conf = os.path.join(tmp, "tmux.conf")
        with open(conf, "w") as f:
            f.write(TMUX_CONF)
        grind = [] if native else ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                                   f"--callgrind-out-file={tmp}/cg.out"]
        with open(os.path.join(tmp, "valgrind.log"), "w") as log:
            self.proc = subprocess.Popen([*grind, tmux, "-S", self.sock, "-f", conf, "-D"],
                                         env=_env(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 60
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"tmux under valgrind did not start: see {tmp}/valgrind.log")
            time.sleep(0.2)
        self.dumps = 0

    def control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.proc.pid)], check=True, capture_output=True,
                       timeout=60)

    def cpu_ns(self) -> int:
        with open(f"/proc/{self.proc.pid}/schedstat") as f:
            return int(f.read().split()[0])

    def dump_file(self) -> str:
        self.dumps += 1
        return os.path.join(self.tmp, f"cg.out.{self.dumps}")


def _instructions(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no total in {path}")


def _top(path: str, n: int) -> list[tuple[int, str]]:
    """The functions that spent the most instructions themselves (exclusive)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", path], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            rows.append((int(m.group(1).replace(",", "")), m.group(2).split(" [")[0]))
    return rows[:n]


def measure(tmux: str, windows: int, idle: float, commands: int, samples: int, keep: str | None,
            top: int, creates: int, cols: int, rows: int, native: bool = False) -> dict:
    tmp = tempfile.mkdtemp(prefix=f"vterm-tmuxcost-{windows}-")
    server = _Server(tmux, tmp, native)
    listener = _Listener()
    driver = TmuxDriver(server.sock, listener, shell_env=_env(), source_user_bashrc=False)
    # Under callgrind a tmux with 1000 windows can take longer than the driver's 10 s to answer.
    driver._call = lambda command, timeout=600: TmuxDriver._call(driver, command, timeout)
    result: dict = {"windows": windows}
    try:
        driver.start()
        names = [f"s{i}" for i in range(windows)]
        t0 = time.monotonic()
        # One at a time: under valgrind, tmux with many windows answers slowly, and the driver's
        # calls time out after 10 s.
        for name in names[:-creates]:
            driver.create_shell(name, cwd=tmp, env={}, cols=cols, rows=rows, timeout=600)
        result["create_s"] = round(time.monotonic() - t0, 1)
        time.sleep(3)  # the last prompts drawn

        def phase(name: str, body) -> tuple[int, float]:
            if native:
                driver._call("display-message -p x")  # as under callgrind
                cpu, t = server.cpu_ns(), time.monotonic()
                body()
                elapsed = time.monotonic() - t
                driver._call("display-message -p x")
                return server.cpu_ns() - cpu, elapsed
            server.control("-i", "on")
            server.control("-z")
            driver._call("display-message -p x")  # tmux runs: callgrind takes the command
            t = time.monotonic()
            body()
            elapsed = time.monotonic() - t
            server.control("-d", name)
            driver._call("display-message -p x")
            server.control("-i", "off")
            path = server.dump_file()
            deadline = time.monotonic() + 30
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.1)
            result.setdefault("top", {})[name] = _top(path, top)
            if keep:
                os.makedirs(keep, exist_ok=True)
                shutil.copy(path, os.path.join(keep, f"callgrind.{windows}.{name}"))
            return _instructions(path), elapsed

        def create_last() -> None:
            for name in names[-creates:]:
                driver.create_shell(name, cwd=tmp, env={}, cols=cols, rows=rows, timeout=600)
            time.sleep(3)  # their prompts drawn

        ir, secs = phase("create", create_last)
        create_ir = ir

        # tmux has no timer with vterm's configuration: what the idle phase counts is the two
        # display-message calls around every phase, taken off the other phases below.
        idle_ir, secs = phase("idle", lambda: time.sleep(idle))
        result["idle_per_s"] = round(idle_ir / secs)

        def run_commands() -> None:
            for k in range(commands):
                cid = f"c{k}"
                driver.run(names[k % windows], cid, "true")
                if listener.wait(cid, 60) != 0:
                    raise RuntimeError(f"command {cid} failed")

        ir, secs = phase("command", run_commands)
        result["per_command"] = round((ir - idle_ir) / commands)
        result["command_phase_s"] = round(secs, 2)

        # What the resource sampler costs tmux every 5 s (TmuxDriver.shell_pids).
        ir, secs = phase("list-panes", lambda: [driver.shell_pids() for _ in range(samples)])
        result["per_list_panes"] = round((ir - idle_ir) / samples)
        result["per_create"] = round((create_ir - idle_ir) / creates)
        return result
    finally:
        driver.close()
        driver.kill_server()
        try:
            server.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def from_files(folder: str, commands: int, samples: int, creates: int, idle: float) -> list[dict]:
    """The figures again from the callgrind files a run kept (--out), as `measure` computes them."""
    results = []
    sizes = sorted({int(f.split(".")[1]) for f in os.listdir(folder) if f.startswith("callgrind.")})
    for n in sizes:
        ir = {phase: _instructions(os.path.join(folder, f"callgrind.{n}.{phase}"))
              for phase in ("create", "idle", "command", "list-panes")}
        results.append({"windows": n, "create_s": "-", "idle_per_s": round(ir["idle"] / idle),
                        "per_command": round((ir["command"] - ir["idle"]) / commands),
                        "per_list_panes": round((ir["list-panes"] - ir["idle"]) / samples),
                        "per_create": round((ir["create"] - ir["idle"]) / min(creates, n))})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tmux", default=shutil.which("tmux") or "tmux", help="the tmux binary of the server")
    parser.add_argument("--windows", default="1,100,1000", help="comma-separated window counts")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle phase")
    parser.add_argument("--commands", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5, help="list-panes calls")
    parser.add_argument("--size", type=lambda v: tuple(int(x) for x in v.split("x")), default=(120, 40),
                        help="COLSxROWS of the shells (120x40: the API's default)")
    parser.add_argument("--native", action="store_true",
                        help="no valgrind: tmux's CPU time in ns instead of instructions (noisy, coarse)")
    parser.add_argument("--creates", type=int, default=5, help="shells of the N made in the create phase")
    parser.add_argument("--top", type=int, default=12, help="functions listed per phase")
    parser.add_argument("--out", help="keep the callgrind files (callgrind.N.PHASE) here")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--from", dest="from_dir", metavar="DIR",
                        help="measure nothing: the figures from the files a run kept with --out (same counts)")
    args = parser.parse_args()
    if args.from_dir:
        for r in from_files(args.from_dir, args.commands, args.samples, args.creates, args.idle):
            print(f"{r['windows']:>8} {r['idle_per_s']:>12,} {r['per_command']:>12,} {r['per_list_panes']:>14,} "
                  f"{r['per_create']:>12,}")
        return
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if not shutil.which(tool) and not args.native:
            sys.exit(f"{tool} not found (apt-get install valgrind)")
    results = []
    u = "ns" if args.native else "Ir"
    print(f"{'windows':>8} {'create s':>9} {u + ' idle/s':>12} {u + '/command':>12} {u + '/list-panes':>14} "
          f"{u + '/create':>12}", flush=True)
    for n in (int(x) for x in args.windows.split(",")):
        r = measure(args.tmux, n, args.idle, args.commands, args.samples, args.out, args.top,
                    min(args.creates, n), *args.size, args.native)
        results.append(r)
        print(f"{n:>8} {r['create_s']:>9} {r['idle_per_s']:>12,} {r['per_command']:>12,} "
              f"{r['per_list_panes']:>14,} {r['per_create']:>12,}", flush=True)
    for r in results:
        for name, rows in r.get("top", {}).items():
            print(f"\n{r['windows']} windows, {name}: top functions (exclusive instructions)")
            for ir, fn in rows:
                print(f"  {ir:>14,}  {fn}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
