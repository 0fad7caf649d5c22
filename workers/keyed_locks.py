"""One lock per key (a backend's per-session locks), kept only while someone holds or awaits it.

A plain dict of locks grows with every key ever seen; inbox messages for sessions that are
not on this backend (or no longer) would each leave one behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0  # threads holding or waiting for the lock


class KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if not entry.users:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
