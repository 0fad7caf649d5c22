"""SQLite's one writer, taken in turn by the stack's processes instead of polled for.

SQLite lets one writing transaction in and has the others poll with growing sleeps (1, 2, 5,
10 ... ms, its busy handler). A command's row is written by a web process and its end by a backend
worker, and `make run` runs several web processes: under load those sleeps were the writers'
queue. The hot writers (a command's record, its end) take a turn here first: the process's threads
one at a time (a lock), the processes one at a time (flock on a file beside the database, which
the kernel hands to the next waiter the moment it is let go, and lets go if its holder dies).
Each starts the moment the one before commits. Other databases: nothing to take.
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
