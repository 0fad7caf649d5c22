"""Watch the autoscaler take a live stack from 2 backends up and back down under load.

    .venv/bin/python -m vterm_project.autoscale_demo [--peak 36] [--capacity 10]

Starts its own stack (private Redis and SQLite in a temporary directory, beat and the local
scaler, 2 backends of ``--capacity`` sessions each, a short autoscaler interval), then ramps
sessions up to ``--peak`` while every session keeps running small commands, holds, and ramps
down. Every few seconds it prints one row: time, sessions, load, backends, the decision.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import threading
import time
from pathlib import Path

import httpx

from .devstack import Stack, StackConfig, free_port


class Load:
    """Sessions of one user, each running a short command in a loop on its own thread."""

    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.sessions: dict[str, threading.Event] = {}
        self.commands = 0
        self.failures = 0
        self.rejected = 0
        self._lock = threading.Lock()

    def add(self) -> bool:
        r = self.http.post("/api/v1/sessions/", json={})
        if r.status_code != 201:
            self.rejected += 1
            return False
        sid, stop = r.json()["id"], threading.Event()
        self.sessions[sid] = stop
        threading.Thread(target=self._loop, args=(sid, stop), daemon=True).start()
        return True

    def remove(self) -> None:
        sid, stop = self.sessions.popitem()
        stop.set()
        self.http.delete(f"/api/v1/sessions/{sid}/")

    def _loop(self, sid: str, stop: threading.Event) -> None:
        client = httpx.Client(base_url=str(self.http.base_url), headers=self.http.headers, timeout=60)
        for i in itertools.count():
            if stop.wait(0.5):
                return
            try:
                r = client.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo {i}", "wait": 10})
                ok = r.status_code == 201 and r.json().get("status") == "succeeded"
            except httpx.HTTPError:
                ok = False
            with self._lock:
                self.commands += 1
                self.failures += 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peak", type=int, default=36, help="sessions at the top of the ramp")
    ap.add_argument("--capacity", type=int, default=10, help="sessions per backend")
    ap.add_argument("--max-backends", type=int, default=6)
    ap.add_argument("--interval", type=float, default=3.0, help="autoscaler interval, seconds")
    ap.add_argument("--step", type=int, default=4, help="sessions added or removed per row")
    ap.add_argument("--hold", type=int, default=8, help="rows at the peak")
    ap.add_argument("--latency-p99", type=float, default=0.05,
                    help="p99 command latency (s) above which a loaded pool scales up")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vterm-autoscale-"))
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=2, redis_port=free_port(), flower_port=None,
                      beat=True, scaler=True, backend_prefix="as", extra_env={
                          "VTERM_BACKEND_CAPACITY": str(args.capacity),
                          "VTERM_POOL_MAX_BACKENDS": str(args.max_backends),
                          "VTERM_AUTOSCALE_INTERVAL": str(args.interval),
                          "VTERM_AUTOSCALE_UP_AFTER": "2", "VTERM_AUTOSCALE_DOWN_AFTER": "3",
                          "VTERM_AUTOSCALE_LATENCY_P99": str(args.latency_p99),
                          "VTERM_AUTOSCALE_COOLDOWN": str(args.interval * 5),
                          "VTERM_HEARTBEAT_INTERVAL": "1", "VTERM_STATS_INTERVAL": "2",
                      })
    stack = Stack(cfg).start()
    try:
        admin = httpx.Client(base_url=stack.url, timeout=30,
                             headers={"Authorization": f"Bearer {stack.token('ops', staff=True)}"})
        load = Load(stack.url, stack.token("loadgen"))
        started = time.monotonic()
        print(f"stack {stack.url}, logs {stack.log_dir}; capacity {args.capacity}/backend, "
              f"autoscaler every {args.interval:g} s", flush=True)
        print(f"{'t(s)':>5} {'sessions':>8} {'load':>5} {'backends':>8} {'desired':>7} {'cmds':>6} {'fail':>4} "
              f"{'503':>4}  decision", flush=True)

        def row() -> dict:
            pool = admin.get("/api/v1/pool/").json()
            backends = admin.get("/api/v1/backends/").json()
            healthy = sorted(b["id"] for b in backends if b["status"] == "healthy")
            s = pool["scaling"]
            print(f"{time.monotonic() - started:5.0f} {pool['metrics']['total_sessions']:8d} "
                  f"{pool['metrics']['average_load']:5.0%} {len(healthy):8d} {s['target_backends']:7d} "
                  f"{load.commands:6d} {load.failures:4d} {load.rejected:4d}  {s['action']}: {s['reason']}",
                  flush=True)
            return pool

        phases = (["up"] * (args.peak // args.step)) + ["hold"] * args.hold + ["down"] * (args.peak // args.step)
        for phase in phases:
            if phase == "up":
                for _ in range(args.step):
                    load.add()
            elif phase == "down":
                for _ in range(min(args.step, len(load.sessions))):
                    load.remove()
            time.sleep(args.interval)
            row()
        # Until the pool is back at its minimum, with nothing draining.
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(args.interval)
            pool = row()
            backends = admin.get("/api/v1/backends/").json()
            if pool["active_backends"] == 2 and len(backends) == 2 and pool["scaling"]["target_backends"] == 2:
                break
        print("backends at the end:", ", ".join(f"{b['id']} ({b['status']})"
                                                 for b in admin.get("/api/v1/backends/").json()), flush=True)
    finally:
        stack.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
