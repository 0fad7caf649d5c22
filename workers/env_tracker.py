"""Keeps each session's exported environment in the database current, for moves after a hard loss.

A drain reads every idle shell's environment as it moves it (failover_runtime.drain); a backend
whose machine died cannot be read. So after a command that may have changed the environment
(`export`, `unset`, `source`, ...), the shell's environment is read once it is idle again
(TmuxDriver.capture_env: a hidden command, a few milliseconds) and stored as the session's
``live_env``, which a later move starts from. Commands that cannot change it cost nothing.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from typing import TYPE_CHECKING

from sessions import failover

if TYPE_CHECKING:
    from .runtime_parts import RuntimeParts

log = logging.getLogger(__name__)

# A builtin that can export, unexport or source, at the start of a simple command.
MAY_CHANGE_ENV = re.compile(r"(?:^|[\s;&|(){}`])(?:export|unset|declare|typeset|readonly|source|eval|\.)(?=\s)")
RETRIES = 3  # a shell given its next command at once is read after that one (if it may change it too)


class EnvTracker(threading.Thread):
    def __init__(self, parts: RuntimeParts, stop: threading.Event) -> None:
        super().__init__(name="vterm-env", daemon=True)
        self.parts, self.stop = parts, stop
        self._todo: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()

    def command_ended(self, name: str, text: str) -> None:
        """Called for each command that ended; cheap unless the command may change the environment."""
        if name not in self._pending and MAY_CHANGE_ENV.search(text):
            self._pending.add(name)
            self._todo.put(name)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                name = self._todo.get(timeout=0.5)
            except queue.Empty:
                continue
            self._pending.discard(name)
            try:
                self._read(name)
            except Exception:
                log.warning("reading the environment of %s failed", name, exc_info=True)

    def _read(self, name: str) -> None:
        for _ in range(RETRIES):
            env = self.parts.driver.capture_env([name]).get(name)
            if env is not None:
                break
            if self.stop.wait(0.2) or name not in self.parts.driver.shell_names():
                return
        else:
            return  # busy all along: its next command of that kind tries again
        epoch = self.parts.ledger.epochs.get(name)
        if epoch is None:
            return
        self.parts.write(lambda: failover.session_live_env_record(session_id=name, backend_id=self.parts.backend_id,
                                                                  epoch=epoch, env=env))
