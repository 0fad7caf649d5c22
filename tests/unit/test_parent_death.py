"""A child started with ``dies_with_this_process`` ends when its parent is killed outright (what
`make run`'s supervisord then restarts): the local scaler's backends, and Celery's embedded beat
through the same call (workers/celery_hooks.py; live in tests/faults/test_make_run_supervisor.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.faults.harness import wait_for

PARENT = """
import subprocess, sys, time
from vterm_project.parent_death import dies_with_this_process
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=dies_with_this_process())
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, other.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_child_ends_with_its_killed_parent_and_a_plain_one_does_not():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    child, other = (int(p) for p in parent.stdout.readline().split())
    try:
        assert _alive(child) and _alive(other)
        parent.kill()  # SIGKILL: no handler of the parent's runs
        parent.wait(10)
        wait_for(lambda: not _alive(child), 30, "the child to end with its parent")
        time.sleep(0.5)
        assert _alive(other)  # without it, an orphan runs on (what this guards against)
    finally:
        for pid in (child, other):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
