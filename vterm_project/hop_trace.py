"""Wall-clock marks along a command's and a keystroke's way, for tests/bench/hop_profile.py.

Off unless ``VTERM_HOP_TRACE`` names a directory when the process starts; then each process appends
"<CLOCK_MONOTONIC ns> <hop>" lines to a file of its own there. CLOCK_MONOTONIC is one clock for every
process of a machine, so the marks of the client, the web and the worker line up. Off, a mark is
one test of a module constant.
"""

from __future__ import annotations

import os
import time

_DIR = os.environ.get("VTERM_HOP_TRACE") or None
ON = _DIR is not None
_fd: int | None = None
_pid = 0


def mark(hop: str) -> None:
    if ON:
        _write(hop)


def _write(hop: str) -> None:
    global _fd, _pid
    now = time.monotonic_ns()
    if _fd is None or _pid != os.getpid():  # a forked child writes a file of its own
        _pid = os.getpid()
        _fd = os.open(os.path.join(_DIR, f"{_pid}.hops"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, f"{now} {hop}\n".encode())  # O_APPEND: a line from each thread stays whole
