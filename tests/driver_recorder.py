"""A listener for driver tests: what a TmuxDriver reports, kept for the test to read and wait on."""

from __future__ import annotations

import os
import threading


def shell_env(home) -> dict[str, str]:
    """The environment driver tests give their shells: the test's PATH, a home of the test's own."""
    return {"PATH": os.environ["PATH"], "HOME": str(home), "TERM": "xterm-256color", "LANG": "C.UTF-8"}


class DriverRecorder:
    """A TmuxDriver listener that keeps what the driver reports, for tests to wait on."""

    def __init__(self) -> None:
        self.output: dict[str, bytearray] = {}
        self.started: list[str] = []
        self.finished: dict[str, object] = {}
        self.cond = threading.Condition()

    def shell_output(self, name, data):
        with self.cond:
            self.output.setdefault(name, bytearray()).extend(data)

    def command_started(self, name, command_id, started_at):
        self.started.append(command_id)

    def command_finished(self, name, result):
        with self.cond:
            self.finished[result.command_id] = result
            self.cond.notify_all()

    def shell_exited(self, name, reason):
        pass

    def server_lost(self):
        pass

    def wait(self, command_id: str, timeout: float = 10):
        with self.cond:
            assert self.cond.wait_for(lambda: command_id in self.finished, timeout), command_id
            return self.finished[command_id]
