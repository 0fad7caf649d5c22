"""Per-session resource usage: read from each session's own cgroup when shells are sandboxed,
else from each shell's process tree (psutil).

Every few seconds (VTERM_RESOURCE_SAMPLE_INTERVAL) the sampler reads, for every shell
of this backend: memory (the cgroup's working set; without a sandbox the tree's RSS),
proportional memory (PSS: shared pages split between the processes sharing them, so the
figures of all sessions add up to what they really cost), CPU percent (100 = one core) and
the number of processes; sandboxed, also the times the memory limit killed a process
(``oom_kills``) and a fork hit the process limit (``process_limit_hits``), whose increases
are counted in /metrics. One batch per round goes to the database
(TerminalSession.resource_usage) through the backend's writer thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psutil
from django.conf import settings

from sessions import metrics, services

from .proctree import children_map, tree_pids
from .sandbox import NoSandbox, Sandbox

log = logging.getLogger(__name__)


class ProcessTreeSampler:
    """Keeps psutil.Process objects between rounds: cpu_percent measures since the previous call."""

    def __init__(self, *, pss: bool = True) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self.pss = pss

    def _tree(self, pid: int, seen: dict[int, psutil.Process],
              children_of: dict[int, list[int]]) -> list[psutil.Process]:
        out = []
        for p in tree_pids(pid, children_of):
            proc = seen.get(p) or self._procs.get(p)
            if proc is None:
                try:
                    proc = psutil.Process(p)
                except psutil.Error:
                    continue
            # The cached object, so that cpu_percent has its previous reading (psutil checks pid reuse).
            seen[p] = proc
            out.append(proc)
        return out

    def sample(self, shell_pids: dict[str, int]) -> dict[str, dict]:
        """``{session_id: {memory_bytes, pss_bytes, cpu_percent, processes, sampled_at}}``."""
        seen: dict[int, psutil.Process] = {}
        children_of = children_map()
        now = datetime.now(UTC).isoformat()
        out = {}
        for session_id, pid in shell_pids.items():
            rss = pss = 0
            cpu = 0.0
            n = 0
            pss_ok = self.pss
            for p in self._tree(pid, seen, children_of):
                try:
                    with p.oneshot():
                        if pss_ok:
                            try:
                                info = p.memory_full_info()
                                rss += info.rss
                                pss += getattr(info, "pss", info.uss)
                            except psutil.AccessDenied:
                                pss_ok = False
                                rss += p.memory_info().rss
                        else:
                            rss += p.memory_info().rss
                        cpu += p.cpu_percent(None)
                    n += 1
                except psutil.Error:
                    continue  # gone meanwhile
            if n:
                out[session_id] = {"memory_bytes": rss, "pss_bytes": pss if pss_ok else None,
                                   "cpu_percent": round(cpu, 1), "processes": n, "sampled_at": now}
        self._procs = seen
        return out


# A session none of whose processes ran since the last reading keeps its figures (nothing of it ran,
# so neither its memory nor its processes grew) without its files being read; they are read again
# at least this often. At 1000 idle sessions the full reading was two thirds of an idle worker's CPU.
FULL_READ_EVERY = 60.0


@dataclass
class _Reading:
    cpu_seconds: float
    at: float  # monotonic, of cpu_seconds
    full_at: float  # monotonic, of the last full reading
    figures: dict


class CgroupSampler:
    """Each session's figures from its sandbox's cgroup; PSS summed over the cgroup's processes."""

    def __init__(self, sandbox: Sandbox, backend_id: str) -> None:
        self.sandbox = sandbox
        self.backend_id = backend_id
        self._last: dict[str, _Reading] = {}
        # The first round finds the shells a restarted worker adopted, with the limit events they
        # had before: those were counted by the worker before, so they are the baseline here.
        self._first_round = True

    def sample(self, names: list[str]) -> dict[str, dict]:
        at = time.monotonic()
        now = datetime.now(UTC).isoformat()
        out, last = {}, {}
        for name in names:
            prev = self._last.get(name)
            if prev is not None and at - prev.full_at < FULL_READ_EVERY:
                cpu_seconds = self.sandbox.cpu_seconds(name)
                if cpu_seconds is None:
                    continue
                if cpu_seconds == prev.cpu_seconds:
                    last[name] = _Reading(cpu_seconds, at, prev.full_at, prev.figures)
                    out[name] = {**prev.figures, "cpu_percent": 0.0, "sampled_at": now}
                    continue
            usage = self.sandbox.usage(name)
            if usage is None:
                continue
            cpu = 0.0
            if prev is not None and at > prev.at:
                cpu = max(0.0, (usage.cpu_seconds - prev.cpu_seconds) / (at - prev.at) * 100)
            before = prev.figures if prev else {"oom_kills": 0, "process_limit_hits": 0}
            for kind, n, was in (("memory", usage.oom_kills, before["oom_kills"]),
                                 ("processes", usage.process_limit_hits, before["process_limit_hits"])):
                if n > was and not (prev is None and self._first_round):
                    metrics.count(metrics.SANDBOX_LIMIT_EVENTS, [kind, self.backend_id], n - was)
            figures = {"memory_bytes": usage.memory_bytes, "pss_bytes": _pss(self.sandbox.pids(name)),
                       "cpu_percent": round(cpu, 1), "processes": usage.processes,
                       "oom_kills": usage.oom_kills, "process_limit_hits": usage.process_limit_hits,
                       "sampled_at": now}
            last[name] = _Reading(usage.cpu_seconds, at, at, figures)
            out[name] = figures
        self._last = last
        self._first_round = False
        return out


def _pss(pids: list[int]) -> int | None:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.AccessDenied:
            return None
        except psutil.Error:
            continue  # gone meanwhile
    return total


class ResourceUsageThread(threading.Thread):
    """Samples the backend's shells and hands each round's figures to ``write`` (the writer thread)."""

    def __init__(self, *, backend_id: str, shell_pids: Callable[[], dict[str, int]],
                 write: Callable[[Callable[[], None]], None], stop: threading.Event,
                 sandbox: Sandbox | NoSandbox | None = None, interval: float | None = None) -> None:
        super().__init__(name="vterm-resource-usage", daemon=True)
        self.backend_id = backend_id
        self.shell_pids = shell_pids
        self.write = write
        self.stop_event = stop
        self.interval = interval or settings.VTERM["RESOURCE_SAMPLE_INTERVAL"]
        self.sampler = ProcessTreeSampler()
        # Sandboxed: the session's own accounting (every process it made, however detached).
        self.cgroups = CgroupSampler(sandbox, backend_id) if isinstance(sandbox, Sandbox) else None
        # Sandboxed, the last round's sums over every session (monotonic time, figures), for the
        # backend's stats (workers/backend_stats.py), which then need not walk every shell again.
        self.session_totals: tuple[float, dict] | None = None

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                pids = self.shell_pids()
                usage = self.cgroups.sample(list(pids)) if self.cgroups else self.sampler.sample(pids)
            except Exception:
                log.warning("resource usage sampling failed", exc_info=True)
                continue
            if self.cgroups:
                self.session_totals = (time.monotonic(), {
                    key: sum(u[key] for u in usage.values()) for key in ("memory_bytes", "cpu_percent", "processes")})
            if usage:
                self.write(lambda usage=usage: services.session_resource_usage_record(
                    backend_id=self.backend_id, usage=usage))
