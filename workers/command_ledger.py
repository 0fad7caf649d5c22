"""Which commands a backend was given, and which of its shells just exited (and at which epoch each was made).

Shared by the runtime (workers/backend.py) and its failover steps (workers/failover_runtime.py),
the inbox and the hand-off check, through workers/runtime_parts.py.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

SEEN_MAX = 100_000  # command ids remembered, to drop a task delivered twice
EXITED_KEEP = 60.0  # seconds a shell that exited by itself is not taken for one that vanished


class CommandLedger:
    """Which command ids this backend has already queued, and which shells just exited."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._exited: dict[str, float] = {}
        self.epochs: dict[str, int] = {}  # shell name -> the placement epoch it was made for

    def claim(self, command_id: str) -> bool:
        """True the first time a command id is seen here."""
        with self._lock:
            if command_id in self._seen:
                return False
            self._seen[command_id] = None
            if len(self._seen) > SEEN_MAX:
                self._seen.popitem(last=False)
            return True

    def received(self, command_id: str) -> bool:
        """Whether this backend was given the command (workers/handoff_check.py)."""
        with self._lock:
            return command_id in self._seen

    def exited(self, name: str) -> None:
        with self._lock:
            self._exited[name] = time.monotonic()
            self.epochs.pop(name, None)

    def recently_exited(self) -> set[str]:
        now = time.monotonic()
        with self._lock:
            self._exited = {n: t for n, t in self._exited.items() if now - t < EXITED_KEEP}
            return set(self._exited)
