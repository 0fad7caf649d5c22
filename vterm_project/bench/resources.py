"""Memory (PSS) and CPU of the processes that hold vterm's sessions.

Groups: ``shells`` (each tmux server's children), ``tmux`` (the servers), ``workers``
(backend worker processes with their children, the control clients included), ``web``
and ``redis``. PSS counts shared pages once across all processes, so sums are honest.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from workers.tmux.pool import all_server_sockets


@dataclass
class ProcessGroups:
    groups: dict[str, list[psutil.Process]] = field(default_factory=dict)

    def pids(self) -> dict[str, list[int]]:
        return {k: [p.pid for p in v] for k, v in self.groups.items()}


def tmux_server_pids(data_dir: Path) -> list[int]:
    """The pid of every tmux server of every backend under ``data_dir/tmux``."""
    pids = []
    for sock in all_server_sockets(data_dir):
        res = subprocess.run(["tmux", "-S", str(sock), "display-message", "-p", "#{pid}"],
                             check=False, capture_output=True, text=True, timeout=10)
        if res.returncode == 0 and res.stdout.strip().isdigit():
            pids.append(int(res.stdout.strip()))
    return pids


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def collect_groups(data_dir: Path | None, worker_pids: list[int], web_pids: list[int],
                   redis_pids: list[int]) -> ProcessGroups:
    groups: dict[str, list[psutil.Process]] = {"shells": [], "tmux": [], "workers": [], "web": [], "redis": []}
    if data_dir is not None:
        for pid in tmux_server_pids(data_dir):
            tree = _tree(pid)
            if tree:
                groups["tmux"].append(tree[0])
                groups["shells"].extend(tree[1:])
    for pid in worker_pids:
        groups["workers"].extend(_tree(pid))
    for pid in web_pids:
        groups["web"].extend(_tree(pid))
    for pid in redis_pids:
        groups["redis"].extend(_tree(pid))
    return ProcessGroups(groups)


def pss_mb(groups: ProcessGroups) -> dict[str, float]:
    """PSS in MB per group."""
    out = {}
    for name, procs in groups.groups.items():
        total = 0
        for p in procs:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        out[name] = total / (1 << 20)
    return out


def cpu_seconds(groups: ProcessGroups) -> dict[str, float]:
    """User + system CPU seconds used so far per group (children that were reaped excluded)."""
    out = {}
    for name, procs in groups.groups.items():
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        out[name] = total
    return out


def self_cpu_seconds() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system
