"""Process trees from one pass over /proc, shared by the samplers of a backend.

psutil's ``Process.children(recursive=True)`` scans all of /proc on every call; a map of
every process's children, built once per round, answers any number of trees.
"""

from __future__ import annotations

import psutil


def children_map() -> dict[int, list[int]]:
    """Every process's children (pids), from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid:
            children.setdefault(ppid, []).append(proc.pid)
    return children


def tree_pids(root: int, children_of: dict[int, list[int]]) -> list[int]:
    """``root`` and all its descendants."""
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children_of.get(pid, ()))
    return out
