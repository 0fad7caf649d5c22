"""workers/backend_stats.StatsSampler on real processes: the tree walk, or the sessions' sums."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from workers.backend_stats import StatsSampler


def test_without_the_sessions_figures_the_tree_below_the_roots_is_walked():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stats = StatsSampler().sample([])
        assert stats["processes"] >= 2  # this process and its child, at least
        assert stats["memory_bytes"] >= psutil.Process(os.getpid()).memory_info().rss
    finally:
        child.kill()
        child.wait()


def test_with_the_sessions_figures_only_the_roots_are_read_and_the_sums_added():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        sessions = {"memory_bytes": 10**9, "cpu_percent": 50.0, "processes": 7}
        stats = StatsSampler().sample([], sessions)
        assert stats["processes"] == 8  # this process and the sessions' 7; its child is not walked
        assert stats["memory_bytes"] >= 10**9 + psutil.Process(os.getpid()).memory_info().rss
        assert stats["cpu_ratio"] >= 0.5 / (psutil.cpu_count() or 1) - 1e-4
    finally:
        child.kill()
        child.wait()
