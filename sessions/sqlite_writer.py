"""SQLite's one writer: the web processes' command writes take it in turn instead of polling for it.

SQLite lets one writing transaction in and has the others poll with growing sleeps (1, 2, 5,
10 ... ms, its busy handler). A web process's command transactions (services.command_create)
therefore take a turn here first: the process's threads one at a time (a lock), and the web
processes of `make run` (several since vterm_project/web_listen.py) one at a time (flock on a file
beside the database, which the kernel hands on when it is let go, or when its holder dies). Each
starts the moment the one before commits, and the turn lasts until the command is on its
backend's inbox, so a session's commands reach it in seq order whichever process took them.

The backends' writers do not take it: they poll. Every writer queuing on one lock file was measured
worse (docs/bench.md, 2026-11-27: 100 × 3/s stalled for seconds at a time); a backend's writer
behind a steady stream of the web's transactions (flock is not first come, first served) is the
likely reason, not verified.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading

from django.db import connection

_lock = threading.Lock()
_fds: dict[tuple[int, str], int] = {}  # (pid, lock file path) -> its descriptor: a forked child opens its own


def writer_turn():
    """A context manager: this process's (and, on a database file, every process's) turn to write."""
    if connection.vendor != "sqlite":
        return contextlib.nullcontext()
    return _Turn(None if connection.is_in_memory_db() else f"{connection.settings_dict['NAME']}-writer")


class _Turn:
    __slots__ = ("fd", "path")

    def __init__(self, path: str | None) -> None:
        self.path, self.fd = path, None

    def __enter__(self):
        _lock.acquire()
        if self.path is None:
            return self
        try:
            key = (os.getpid(), self.path)
            fd = _fds.get(key)
            if fd is None:
                fd = _fds[key] = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.fd = fd
        except BaseException:
            _lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.fd is not None:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            _lock.release()
