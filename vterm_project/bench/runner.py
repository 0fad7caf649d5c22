"""One benchmark run end to end: stack, floor, sessions, load, resources, report."""

from __future__ import annotations

import asyncio
import math
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from . import floor, load, peers, report, resources


@dataclass
class BenchConfig:
    sessions: int = 10
    rate: float = 1.0  # commands per second per (quiet) session
    duration: float = 30.0  # seconds of load
    channels: list[str] = field(default_factory=lambda: ["rest", "ws"])
    mixed: bool = False
    url: str | None = None  # an existing stack; None: start one
    token: str | None = None
    backends: int = 2
    web_processes: int = 2  # of a started stack: as `make run` (vterm_project/devstack.py DEFAULT_WEB_PROCESSES)
    redis_url: str | None = None  # for a stack it starts; None: a private redis-server
    data_dir: str | None = None  # its stack's data (or, with url, where to find the tmux sockets)
    create_concurrency: int = 16
    floor_samples: int = 200
    wait: float = 30.0
    keep: bool = False  # leave the sessions (and a started stack's data) in place
    stack_env: dict[str, str] = field(default_factory=dict)
    peers: peers.PeerConfig | None = None  # also measure vterm beside SWE-ReX and terminado


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = print) -> dict:
    own = cfg.url is None
    stack, tmp = None, None
    if own:
        from vterm_project.devstack import Stack, StackConfig, free_port

        tmp = None if cfg.data_dir else tempfile.mkdtemp(prefix="vterm-bench-")
        data_dir = Path(cfg.data_dir or tmp)
        per_backend = math.ceil(cfg.sessions / max(cfg.backends, 1))
        scfg = StackConfig(data_dir=data_dir, port=free_port(), backends=cfg.backends, redis_url=cfg.redis_url,
                           redis_port=free_port(), flower_port=None, beat=False, backend_prefix="bench",
                           web_processes=cfg.web_processes,
                           extra_env={"VTERM_BACKEND_CAPACITY": str(max(200, per_backend + 10)),
                                      "SECRET_KEY": secrets.token_hex(24),
                                      # One bench user drives every session: per-user limits off.
                                      "VTERM_MAX_SESSIONS_PER_USER": "0", "VTERM_COMMAND_RATE": "0",
                                      "VTERM_MAX_PENDING_WAITS_PER_USER": "0",
                                      **cfg.stack_env})
        stack = Stack(scfg)
        say(f"starting a stack: {cfg.web_processes} web processes, {cfg.backends} backends, data in {data_dir}")
        t0 = time.perf_counter()
        stack.start(timeout=120)
        say(f"  up in {time.perf_counter() - t0:.1f} s at {stack.url}")
        url, token = stack.url, stack.token("bench")
    else:
        url, token = cfg.url, cfg.token
        if not token:
            raise ValueError("--token is needed with --url")
        data_dir = Path(cfg.data_dir) if cfg.data_dir else None
    try:
        return _run(cfg, url, token, stack, data_dir, say)
    finally:
        if stack is not None and not cfg.keep:
            say("stopping the stack")
            stack.stop()
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)


def _floor(cfg: BenchConfig, say) -> dict:
    say("measuring the floor (bare bash in tmux over control mode)…")
    strict = floor.floor_latency(cfg.floor_samples, gap=0.0)
    gap = 0.01
    paced = floor.floor_latency(max(20, cfg.floor_samples // 2), gap=gap)
    driver = floor.driver_latency(max(20, cfg.floor_samples // 2), gap=gap)
    return {"strict": report.summary(strict), "paced": report.summary(paced), "paced_gap_ms": gap * 1000,
            "driver": report.summary(driver)}


def _groups(stack, data_dir):
    if stack is not None:
        workers = [p.pid for n, p in stack.procs.items() if n.startswith("bench-")]
        web = [p.pid for n, p in stack.procs.items() if n == "web" or n.startswith("web-")]
        redis_ = [stack.procs["redis"].pid] if "redis" in stack.procs else []
        return resources.collect_groups(data_dir, workers, web, redis_)
    return resources.collect_groups(data_dir, [], [], [])


def _memory(groups, sessions: int) -> dict:
    mb = resources.pss_mb(groups)
    held = mb["shells"] + mb["tmux"] + mb["workers"]
    n = max(sessions, 1)
    return {"sessions": sessions, "groups_mb": mb, "held_mb": held, "per_session_mb": held / n,
            "per_session_all_mb": sum(mb.values()) / n,
            "processes": {k: len(v) for k, v in groups.groups.items()}}


def _run(cfg: BenchConfig, url: str, token: str, stack, data_dir, say) -> dict:
    result: dict = {"config": {**asdict(cfg), "own_stack": stack is not None, "url": url, "token": None},
                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    result["floor"] = _floor(cfg, say)
    say(f"  floor p50 {result['floor']['strict']['p50']:.3f} ms")
    result = asyncio.run(_run_async(cfg, url, token, stack, data_dir, say, result))
    if cfg.peers is not None:
        result["peers"] = peers.compare(url, token, cfg.peers, say)
    return result


async def _run_async(cfg, url, token, stack, data_dir, say, result) -> dict:
    client = load.Client(url, token, connections=max(cfg.sessions, cfg.create_concurrency) + 4)
    errors: Counter = Counter()
    ids: list[str] = []
    try:
        say(f"creating {cfg.sessions} sessions, {cfg.create_concurrency} at a time…")
        step = max(1, cfg.sessions // 10)

        def created(done, total):
            if done % step == 0 or done == total:
                say(f"  {done}/{total}")
        ids, per, total = await load.create_sessions(client, cfg.sessions, cfg.create_concurrency, errors, created)
        result["create"] = {"created": len(ids), "total_s": total, "per_session": report.summary(per),
                            "concurrency": cfg.create_concurrency}
        say(f"  {len(ids)} created in {total:.2f} s")
        groups = await asyncio.to_thread(_groups, stack, data_dir)
        result["memory_idle"] = await asyncio.to_thread(_memory, groups, len(ids))

        channels = list(cfg.channels)
        if "ws" in channels and ids:
            channels = await _probe_ws(client, ids[0], channels, say)
        plans = load.plan_sessions(ids, rate=cfg.rate, channels=channels, mixed=cfg.mixed)
        result["config"]["channels_used"] = channels

        cpu0, self0, sys0 = resources.cpu_seconds(groups), resources.self_cpu_seconds(), psutil.cpu_times()
        say(f"load: {len(plans)} sessions for {cfg.duration:g} s…")
        lr = await load.run_load(client, plans, cfg.duration, mixed=cfg.mixed, wait=cfg.wait, progress=say)
        cpu1, self1, sys1 = resources.cpu_seconds(groups), resources.self_cpu_seconds(), psutil.cpu_times()
        wall = lr.duration
        cpu = {k: (cpu1[k] - cpu0[k]) / wall * 100 for k in cpu0 if groups.groups.get(k)}
        cpu["bench client"] = (self1 - self0) / wall * 100
        busy = lambda t: t.user + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        cpu["machine"] = (busy(sys1) - busy(sys0)) / wall * 100
        result["cpu"] = cpu

        result["memory"] = await asyncio.to_thread(_memory, groups, len(ids))
        gone = await load.sessions_dropped(client, ids)
        errors.update(lr.errors)
        result["errors"] = dict(errors)
        result["dropped"] = len(gone | lr.dropped)
        result["late"] = lr.late
        result["load_s"] = wall
        result["throughput"] = len(lr.samples) / wall if wall else 0.0
        result["latency"] = _latency_table(lr, wall, cfg.mixed, result["floor"]["strict"]["p50"])
        result["samples"] = [[round(s.t, 4), s.channel, s.role, s.phase, round(s.ms, 4)] for s in lr.samples]
        return result
    finally:
        if ids and not cfg.keep:
            say(f"ending {len(ids)} sessions")
            await load.delete_sessions(client, ids)
        await client.aclose()


async def _probe_ws(client, sid: str, channels: list[str], say) -> list[str]:
    ws = load._Ws(client, sid)
    try:
        await ws.open()
        await ws.close()
        return channels
    except Exception as exc:  # noqa: BLE001 (any failure to open means: no WebSocket here)
        say(f"  the WebSocket endpoint does not answer ({type(exc).__name__}: {exc}); REST only")
        return [c for c in channels if c != "ws"] or ["rest"]


def _latency_table(lr: load.LoadResult, wall: float, mixed: bool, floor_p50: float) -> dict:
    series: dict[str, list[float]] = {}
    for s in lr.samples:
        key = s.channel if not mixed else f"{s.channel} {s.role}" + (f" {s.phase}" if s.role == "quiet" else "")
        series.setdefault(key, []).append(s.ms)
    out = {}
    for name in sorted(series):
        summ = report.summary(series[name])
        # Phased series ran for half the time.
        span = wall / 2 if mixed and name.endswith(("calm", "noisy")) else wall
        summ["rate"] = summ["n"] / span if span else 0.0
        summ["floor_ratio"] = summ["p50"] / floor_p50 if floor_p50 else math.nan
        out[name] = summ
    return out


def histogram_series(result: dict) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    mixed = result["config"]["mixed"]
    for _t, channel, role, phase, ms in result["samples"]:
        key = channel if not mixed else f"{channel} {role}" + (f" {phase}" if role == "quiet" else "")
        series.setdefault(key, []).append(ms)
    return series

