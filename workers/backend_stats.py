"""A backend's resource figures (memory, CPU, processes), sampled with psutil for its heartbeat.

What a backend costs is its worker process, its tmux servers and every shell with its children.
Until per-session usage (TerminalSession.resource_usage) exists, the pool reads these per-backend
figures from a Redis hash written next to the heartbeat.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from .proctree import children_map, tree_pids

CGROUP = Path("/sys/fs/cgroup")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


def memory_ratio() -> float:
    """Share of the memory this backend may use that is in use: its cgroup's limit when it has one
    (a container), else the host's."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            return int((CGROUP / "memory.current").read_text()) / int(limit)
    except (OSError, ValueError):
        pass
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / vm.total


class StatsSampler:
    """Keeps psutil.Process objects between samples: cpu_percent needs the previous reading."""

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._cpus = psutil.cpu_count() or 1

    def _tree(self, roots: list[int]) -> list[psutil.Process]:
        seen: dict[int, psutil.Process] = {}
        children_of = children_map()
        for root in roots:
            for pid in tree_pids(root, children_of):
                if pid in seen:
                    continue
                try:
                    seen[pid] = self._procs.get(pid) or psutil.Process(pid)
                except psutil.Error:
                    continue
        self._procs = seen
        return list(seen.values())

    def sample(self, tmux_pids: list[int], sessions: dict | None = None) -> dict[str, float]:
        """Figures for this worker and its tmux servers, with the shells below them. ``sessions``: the
        sums of the sandboxed sessions' own figures (their cgroups, read by workers/resource_usage.py),
        which cover every process of theirs: then only the worker and the tmux servers are read here,
        not the thousands of processes below them."""
        roots = [os.getpid(), *tmux_pids]
        rss, cpu, n = 0, 0.0, 0
        if sessions is not None:
            procs = [p for p in (self._procs.get(pid) or _process(pid) for pid in roots) if p is not None]
            self._procs = {p.pid: p for p in procs}
            rss, cpu, n = sessions["memory_bytes"], sessions["cpu_percent"], sessions["processes"]
        else:
            procs = self._tree(roots)
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    cpu += p.cpu_percent(None)
                n += 1
            except psutil.Error:
                continue
        return {"memory_bytes": rss, "memory_ratio": round(memory_ratio(), 4),
                "cpu_ratio": round(cpu / (100.0 * self._cpus), 4), "processes": n}
