"""Simulated users: sessions created concurrently, then driven at a set rate.

A command counts only when the client holds its exit code: over REST the answer to
``POST …/commands/`` with ``wait``; over the WebSocket the ``command`` frame that
ends it. Nothing is cached or skipped; every command is a real one in a real shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import httpx

FINAL = {"succeeded", "failed", "timed_out", "interrupted"}
STREAM_COMMAND = "seq 1 200000"  # about 1.3 MB of output per command


@dataclass
class Sample:
    t: float  # seconds since the load began, when the answer came
    channel: str  # rest | ws
    role: str  # quiet | busy | stream
    phase: str  # calm | noisy ("" outside the mixed scenario)
    ms: float


@dataclass
class LoadResult:
    samples: list[Sample] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    dropped: set[str] = field(default_factory=set)
    late: int = 0  # ticks skipped because the previous command was still running
    duration: float = 0.0


@dataclass
class SessionPlan:
    id: str
    channel: str
    role: str
    rate: float
    command: str = "true"


class Client:
    """One HTTP connection pool for every simulated user (keep-alive, no retries).

    Commands go through aiohttp: with 100 connections, httpx's pool took about 20 ms of
    the client's CPU per call, so the bench measured itself. The rest uses httpx.
    """

    def __init__(self, url: str, token: str, connections: int) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers,
                                      timeout=httpx.Timeout(60.0, pool=120.0), limits=limits)
        self._connections = connections
        self._fast: aiohttp.ClientSession | None = None

    @property
    def fast(self) -> aiohttp.ClientSession:
        if self._fast is None:  # made inside the running loop
            self._fast = aiohttp.ClientSession(
                base_url=self.url, headers=self.headers, timeout=aiohttp.ClientTimeout(total=60),
                connector=aiohttp.TCPConnector(limit=self._connections, force_close=False))
        return self._fast

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._fast is not None:
            await self._fast.close()


async def create_sessions(client: Client, n: int, concurrency: int, errors: Counter,
                          progress=None) -> tuple[list[str], list[float], float]:
    """Create ``n`` sessions, ``concurrency`` at a time: (ids, ms per session, total seconds)."""
    sem = asyncio.Semaphore(concurrency)
    ids: list[str] = []
    per: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.http.post("/api/v1/sessions/", json={"name": f"bench-{i}"})
            except httpx.HTTPError as exc:
                errors[f"create: {type(exc).__name__}"] += 1
                return
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code != 201 or r.json().get("status") != "active":
                errors[f"create: HTTP {r.status_code} {r.text[:80]}"] += 1
                return
            ids.append(r.json()["id"])
            per.append(ms)
            if progress:
                progress(len(ids), n)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return ids, per, time.perf_counter() - t0


async def delete_sessions(client: Client, ids: list[str], concurrency: int = 16) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(sid: str) -> None:
        async with sem:
            try:
                await client.http.delete(f"/api/v1/sessions/{sid}/")
            except httpx.HTTPError:
                pass

    await asyncio.gather(*(one(s) for s in ids))


async def sessions_dropped(client: Client, ids: list[str], concurrency: int = 16) -> set[str]:
    """Sessions that are no longer live (or no longer there) at the end of the load."""
    sem = asyncio.Semaphore(concurrency)
    gone: set[str] = set()

    async def one(sid: str) -> None:
        async with sem:
            try:
                r = await client.http.get(f"/api/v1/sessions/{sid}/")
                if r.status_code != 200 or r.json().get("status") not in ("active", "idle"):
                    gone.add(sid)
            except httpx.HTTPError:
                gone.add(sid)

    await asyncio.gather(*(one(s) for s in ids))
    return gone


class _Rest:
    def __init__(self, client: Client, sid: str) -> None:
        self.client, self.sid = client, sid

    async def open(self) -> None:
        pass

    async def run(self, command: str, wait: float) -> dict:
        async with self.client.fast.post(f"/api/v1/sessions/{self.sid}/commands/",
                                         json={"command": command, "wait": wait}) as r:
            if r.status != 201:
                raise _Failed(f"HTTP {r.status}", drop=r.status in (404, 409))
            return await r.json()

    async def close(self) -> None:
        pass


class _Ws:
    def __init__(self, client: Client, sid: str) -> None:
        self.client, self.sid = client, sid
        self.conn = None

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        url = self.client.url.replace("http", "ws", 1) + f"/ws/v1/sessions/{self.sid}/"
        self.conn = await connect(url, additional_headers={"Authorization": f"Bearer {self.client.token}"},
                                  compression=None, max_size=None, open_timeout=30)
        hello = json.loads(await self.conn.recv())
        if hello.get("type") != "hello":
            raise _Failed(f"ws: first frame {hello.get('type')!r}, not hello", drop=True)

    async def run(self, command: str, wait: float) -> dict:
        ref = uuid.uuid4().hex[:12]
        await self.conn.send(json.dumps({"type": "run", "command": command, "ref": ref}))
        async with asyncio.timeout(wait):
            while True:
                frame = json.loads(await self.conn.recv())
                kind = frame.get("type")
                if kind == "command" and frame.get("ref") == ref and frame["command"].get("status") in FINAL:
                    return frame["command"]
                if kind == "error":
                    raise _Failed(f"ws error {frame.get('code')}")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class _Failed(Exception):
    def __init__(self, what: str, drop: bool = False) -> None:
        super().__init__(what)
        self.drop = drop


def _phase_of(role: str, t: float, mixed: bool, duration: float) -> str:
    if not mixed:
        return ""
    return "calm" if t < duration / 2 else "noisy"


async def _open(plan: SessionPlan, client: Client, result: LoadResult, sem: asyncio.Semaphore):
    conn = _Ws(client, plan.id) if plan.channel == "ws" else _Rest(client, plan.id)
    async with sem:
        try:
            await conn.open()
        except Exception as exc:  # noqa: BLE001 (a session that cannot be reached is a dropped one)
            result.errors[f"{plan.channel} open: {type(exc).__name__} {exc}"[:120]] += 1
            result.dropped.add(plan.id)
            return None
    return conn


async def _user(plan: SessionPlan, conn, start: float, duration: float, mixed: bool,
                result: LoadResult, wait: float) -> None:
    if conn is None:
        return
    try:
        interval = 1.0 / plan.rate if plan.rate > 0 else None
        # In the mixed scenario, noise (busy sessions, the streamer) runs only in the second half.
        first = duration / 2 if mixed and plan.role != "quiet" else 0.0
        nxt = start + first + (random.uniform(0, interval) if interval else 0.0)
        end = start + duration
        while True:
            now = time.perf_counter()
            if nxt >= end or now >= end:
                return
            if nxt > now:
                await asyncio.sleep(nxt - now)
            t0 = time.perf_counter()
            try:
                body = await conn.run(plan.command, wait)
            except _Failed as exc:
                result.errors[f"{plan.channel}: {exc}"] += 1
                if exc.drop:
                    result.dropped.add(plan.id)
                    return
                body = None
            except (httpx.HTTPError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                result.errors[f"{plan.channel}: {type(exc).__name__}"] += 1
                body = None
            except Exception as exc:  # noqa: BLE001 (websockets' ConnectionClosed and kin: the session is lost)
                result.errors[f"{plan.channel}: {type(exc).__name__}"] += 1
                result.dropped.add(plan.id)
                return
            t1 = time.perf_counter()
            if body is not None:
                if body.get("status") not in FINAL or body.get("exit_code") is None:
                    result.errors[f"{plan.channel}: no exit code within wait ({body.get('status')})"] += 1
                elif plan.command == "true" and body["exit_code"] != 0:
                    result.errors[f"{plan.channel}: exit code {body['exit_code']}"] += 1
                else:
                    result.samples.append(Sample(t1 - start, plan.channel, plan.role,
                                                 _phase_of(plan.role, t0 - start, mixed, duration),
                                                 (t1 - t0) * 1000))
            if interval is None:
                nxt = time.perf_counter()
            else:
                nxt += interval
                if nxt < time.perf_counter():  # still running when the next was due: skip, don't pile up
                    skipped = int((time.perf_counter() - nxt) / interval) + 1
                    result.late += skipped
                    nxt += skipped * interval
    finally:
        with contextlib.suppress(Exception):  # closing a broken connection may fail; nothing to do
            await conn.close()


def plan_sessions(ids: list[str], *, rate: float, channels: list[str], mixed: bool,
                  busy_fraction: float = 0.1, busy_factor: float = 10.0) -> list[SessionPlan]:
    """Which session does what. Mixed: one streamer, a few busy, the rest quiet at ``rate``."""
    plans = []
    n_busy = max(1, int(len(ids) * busy_fraction)) if mixed and len(ids) > 2 else 0
    for i, sid in enumerate(ids):
        channel = channels[i % len(channels)]
        if mixed and i == 0:
            plans.append(SessionPlan(sid, "rest", "stream", 0.0, STREAM_COMMAND))
        elif mixed and i <= n_busy:
            plans.append(SessionPlan(sid, channel, "busy", rate * busy_factor))
        else:
            plans.append(SessionPlan(sid, channel, "quiet", rate))
    return plans


async def run_load(client: Client, plans: list[SessionPlan], duration: float, *, mixed: bool,
                   wait: float = 30.0, progress=None) -> LoadResult:
    result = LoadResult()
    # Connections (WebSockets) open before the clock starts, a few at a time: set-up is not a command.
    sem = asyncio.Semaphore(32)
    conns = await asyncio.gather(*(_open(p, client, result, sem) for p in plans))
    start = time.perf_counter()
    users = [asyncio.create_task(_user(p, c, start, duration, mixed, result, wait)) for p, c in zip(plans, conns)]
    reporter = asyncio.create_task(_progress(result, start, duration, progress)) if progress else None
    await asyncio.gather(*users)
    result.duration = time.perf_counter() - start
    if reporter:
        reporter.cancel()
    return result


async def _progress(result: LoadResult, start: float, duration: float, progress, every: float = 2.0) -> None:
    seen = 0
    while True:
        await asyncio.sleep(every)
        new = result.samples[seen:]
        seen = len(result.samples)
        lat = sorted(s.ms for s in new)
        p50 = lat[len(lat) // 2] if lat else float("nan")
        progress(f"  {time.perf_counter() - start:6.1f}/{duration:.0f} s  {len(new) / every:7.1f} cmd/s  "
                 f"p50 {p50:6.2f} ms  total {seen}  errors {sum(result.errors.values())}")
