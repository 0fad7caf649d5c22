"""The SQLite writer's turn (sessions/sqlite_writer.py) is one process's at a time: another process
enters only once the holder lets go, or dies holding it."""

from __future__ import annotations

import signal
import subprocess
import sys

from sessions.sqlite_writer import _Turn
from vterm_project.devstack import ROOT

HOLDER = """
import sys, time
from pathlib import Path
from sessions.sqlite_writer import _Turn
path, marker, how = sys.argv[1:]
with _Turn(path):
    print("held", flush=True)
    if how == "hang":
        time.sleep(600)
    time.sleep(0.3)
    Path(marker).write_text("let go")
"""


def _holder(tmp_path, how: str) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "db.sqlite3-writer"),
                              str(tmp_path / "released"), how], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_another_process_enters_once_the_holder_lets_go(tmp_path):
    child = _holder(tmp_path, "release")
    with _Turn(str(tmp_path / "db.sqlite3-writer")):
        assert (tmp_path / "released").read_text() == "let go"
    assert child.wait(30) == 0


def test_a_holder_that_dies_lets_go(tmp_path):
    child = _holder(tmp_path, "hang")
    child.send_signal(signal.SIGKILL)
    with _Turn(str(tmp_path / "db.sqlite3-writer")):
        assert child.wait(30) == -signal.SIGKILL
    assert not (tmp_path / "released").exists()
