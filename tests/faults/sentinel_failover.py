"""The Redis primary killed (SIGKILL) under a steady command load, the stack on Redis Sentinel.

A primary, a replica and three sentinels of the test's own (tests/redis_sentinel.py), the stack
on ``REDIS_URL=sentinel://…`` with ``REDIS_SENTINEL_MASTER`` and ``REDIS_SENTINEL_PASSWORD``, the
vterm settings at their defaults (heartbeat TTL 7 s, reconcile every 3 s, ...). Commands go
through the REST API round-robin over a few sessions; every answer is counted: accepted (201),
refused (503), anything else. Then every accepted command must reach a final state.

    .venv/bin/python -m tests.faults.sentinel_failover --runs 3

prints the table docs/failover.md quotes (each run on a new Sentinel set and stack).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.redis_sentinel import SentinelSet

from .harness import FINAL, FaultStack, wait_for

# vterm's own defaults, spelled out: FaultStack would otherwise shorten the heartbeat TTL and the
# reconcile interval for its other scenarios.
DEFAULTS = {"VTERM_HEARTBEAT_INTERVAL": 2, "VTERM_HEARTBEAT_TTL": 7, "VTERM_POOL_START_GRACE": 20,
            "VTERM_RECONCILE_INTERVAL": 3, "VTERM_MIGRATE_TIMEOUT": 30, "VTERM_ORPHAN_INTERVAL": 30,
            "VTERM_DRAIN_GRACE": 10,
            # The load is one user sending as fast as it is answered: the per-user command rate (a
            # limit of its own, tested elsewhere) would answer part of it 429 instead of 201 or 503.
            "VTERM_COMMAND_RATE": 0}


@dataclass
class Answer:
    at: float  # monotonic time the request was sent
    status: int | str  # HTTP status, or the exception's name
    command: dict | None = None
    done: float = 0.0  # monotonic time the answer came


@dataclass
class FailoverOutcome:
    answers: list[Answer] = field(default_factory=list)
    ended: list[dict] = field(default_factory=list)
    promoted_s: float = 0.0  # kill -> the sentinels name a new primary
    recover_s: float = 0.0  # kill -> the first 201 to a command sent after it
    slowest_s: float = 0.0  # the longest any request waited for its answer
    after: list[dict] = field(default_factory=list)  # a command per session once it was over
    new_session: dict | None = None  # a session created after the failover, and a command in it

    @property
    def accepted(self) -> int:
        return sum(a.status == 201 for a in self.answers)

    @property
    def refused(self) -> int:
        return sum(a.status == 503 for a in self.answers)

    @property
    def other(self) -> list[Answer]:
        return [a for a in self.answers if a.status not in (201, 503)]

    @property
    def lost(self) -> list[dict]:
        return [c for c in self.ended if c["status"] not in FINAL]

    def by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.ended:
            counts[c["status"]] = counts.get(c["status"], 0) + 1
        return counts


def _load(fs: FaultStack, sids: list[str], stop: threading.Event, out: FailoverOutcome) -> None:
    i = 0
    with httpx.Client(base_url=fs.stack.url, headers={"Authorization": f"Bearer {fs.api.token}"}) as http:
        while not stop.is_set():
            sid = sids[i % len(sids)]
            at = time.monotonic()
            try:
                r = http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo load-{i}"}, timeout=30)
                out.answers.append(Answer(at, r.status_code, r.json() if r.status_code == 201 else None,
                                          time.monotonic()))
                if r.status_code != 201:
                    time.sleep(0.05)
            except httpx.HTTPError as exc:
                out.answers.append(Answer(at, exc.__class__.__name__, None, time.monotonic()))
                time.sleep(0.05)
            i += 1


def primary_killed_under_load(fs: FaultStack, sentinels: SentinelSet, *, sessions: int = 4,
                              load_s: float = 3.0, settle_s: float = 120.0) -> FailoverOutcome:
    out = FailoverOutcome()
    sids = [fs.api.create_session()["id"] for _ in range(sessions)]
    stop = threading.Event()
    load = threading.Thread(target=_load, args=(fs, sids, stop, out), daemon=True)
    load.start()
    try:
        time.sleep(load_s)
        old = sentinels.kill_primary()
        killed_at = time.monotonic()  # the process is gone: what is sent from now on meets no primary
        sentinels.wait_promoted(old)
        out.promoted_s = time.monotonic() - killed_at

        def served_again() -> bool:
            return any(a.status == 201 and a.at > killed_at for a in out.answers)
        wait_for(served_again, 120, "a command sent after the kill to be accepted", interval=0.05)
        time.sleep(load_s)  # steady load on the new primary too
    finally:
        stop.set()
        load.join(60)
    out.recover_s = min(a.done for a in out.answers if a.status == 201 and a.at > killed_at) - killed_at
    out.slowest_s = max(a.done - a.at for a in out.answers)
    acked = [a.command for a in out.answers if a.status == 201]
    out.ended = fs.settle(acked, timeout=settle_s)
    out.after = [fs.api.run(sid, "echo after-failover") for sid in sids]
    s = fs.api.create_session()
    out.new_session = {"session": s, "command": fs.api.run(s["id"], "echo new-session")}
    # The killed node comes back as a replica: the set can fail over again.
    sentinels.restart_node(old)
    sentinels.wait_replica_attached()
    return out


def handoffs_lost_with_the_primary(fs: FaultStack, sentinels: SentinelSet, commands: int = 5) -> dict:
    """Commands accepted (201) while their hand-off exists only on the primary, which then dies.

    The backend's worker and the replica are stopped (SIGSTOP) and the primary's replication link
    cut: the web records each command and RPUSHes it onto the backend's inbox on the primary,
    which answers, but neither the replica (not replicated) nor the backend (stopped, so not
    taken) gets it. The primary is
    killed, the replica resumed and promoted, the backend resumed: the inbox on the new primary
    is empty. Only the database knows of these commands (workers/handoff_check.py)."""
    backend = fs.backend_ids()[0]
    sid = fs.session_on(backend)["id"]
    assert fs.api.run(sid, "cd /tmp")["status"] == "succeeded"
    worker = fs.stack.procs[backend]
    replica = sentinels.replica_port()
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        sentinels.signal_node(replica, signal.SIGSTOP)
        try:
            sentinels.cut_replicas()
            acked = [fs.submit(sid, f"echo handed-off-{i}") for i in range(commands)]
            old = sentinels.kill_primary()
        finally:
            sentinels.signal_node(replica, signal.SIGCONT)
        new = sentinels.wait_promoted(old)
        prefix = fs.stack.config.extra_env.get("VTERM_REDIS_PREFIX", "")
        lost_on_redis = sentinels.inbox_length(new, prefix, backend)  # before the backend could take any
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    ended = fs.settle([c for c in acked if c], timeout=120)
    after = fs.api.run(sid, "echo after")
    sentinels.restart_node(old)
    sentinels.wait_replica_attached()
    return {"acked": acked, "ended": ended, "after": after, "inbox_after_failover": lost_on_redis}


def table(outcomes: list[FailoverOutcome]) -> str:
    rows = [("| run | accepted (201) | refused (503) | other answers | accepted, never final | ended: statuses "
             "| promoted after s | commands accepted again after s | slowest answer s |"),
            "| ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for i, o in enumerate(outcomes, 1):
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(o.by_status().items()))
        rows.append(f"| {i} | {o.accepted} | {o.refused} | {len(o.other)} | {len(o.lost)} | {statuses} "
                    f"| {o.promoted_s:.1f} | {o.recover_s:.1f} | {o.slowest_s:.1f} |")
    if len(outcomes) > 1:
        rec = [o.recover_s for o in outcomes]
        rows.append(f"\nrecovery: median {statistics.median(rec):.1f} s, max {max(rec):.1f} s")
    return "\n".join(rows)


def run_once(tmp: Path) -> FailoverOutcome:
    with SentinelSet() as sentinels:
        env = {**DEFAULTS, **{k: v for k, v in sentinels.env().items() if k != "REDIS_URL"}}
        with FaultStack(sentinels.url, tmp, prefix="sn", **env) as fs:
            return primary_killed_under_load(fs, sentinels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    outcomes = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="vterm-sentinel-faults-") as tmp:
            outcomes.append(run_once(Path(tmp)))
        print(f"run {i + 1}/{args.runs} done", flush=True)
    print(table(outcomes))


if __name__ == "__main__":
    main()
