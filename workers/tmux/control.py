"""A tmux control-mode client (``tmux -C``): one pipe, commands in, events out.

tmux answers commands in the order they were sent, each inside a
``%begin``/``%end`` (or ``%error``) block, and pushes notifications such as
``%output %<pane> <escaped bytes>`` between blocks. Commands are written under a
lock together with the future that will receive their reply, so replies match up.
"""

from __future__ import annotations

import io
import logging
import subprocess
import threading
from collections import deque
from concurrent.futures import Future
from typing import Callable

from .protocol import decode_output

log = logging.getLogger(__name__)


class TmuxCommandError(RuntimeError):
    """tmux answered a command with %error."""


class ControlClosed(RuntimeError):
    """The control connection (or the tmux server behind it) has gone."""


OutputHandler = Callable[[str, bytes], None]
EventHandler = Callable[[str, list[str]], None]


class ControlClient:
    def __init__(
        self,
        argv: list[str],
        env: dict[str, str],
        on_output: OutputHandler,
        on_event: EventHandler,
    ) -> None:
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            bufsize=0,
            # Its own session: a signal to the worker's process group (Ctrl-C in `make run`, a
            # SIGTERM to the group) must not end the connection before the worker closes it
            # itself, which looked like a lost tmux server. If the worker dies, tmux sees EOF.
            start_new_session=True,
        )
        self._on_output = on_output
        self._on_event = on_event
        self._lock = threading.Lock()
        self._waiting: deque[Future] = deque()
        self.closed = threading.Event()
        self._reader = threading.Thread(target=self._read_loop, name="tmux-control", daemon=True)
        self._reader.start()

    # -- commands -------------------------------------------------------------

    def send(self, command: str) -> Future:
        """Send one tmux command line; the future gets its output lines."""
        if "\n" in command:
            raise ValueError("a tmux command is one line")
        fut: Future = Future()
        with self._lock:
            if self.closed.is_set():
                fut.set_exception(ControlClosed("tmux control connection is closed"))
                return fut
            self._waiting.append(fut)
            try:
                self._proc.stdin.write(command.encode() + b"\n")
            except (BrokenPipeError, OSError) as exc:
                self._waiting.pop()
                fut.set_exception(ControlClosed(str(exc)))
        return fut

    def call(self, command: str, timeout: float = 10.0) -> list[str]:
        return self.send(command).result(timeout)

    def close(self) -> None:
        with self._lock:
            if self._proc.stdin and not self._proc.stdin.closed:
                try:
                    self._proc.stdin.close()  # tmux detaches this client on EOF
                except OSError:
                    pass
        try:
            self._proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._reader.join(timeout=3)

    # -- reading --------------------------------------------------------------

    def _read_loop(self) -> None:
        block: list[str] | None = None
        ours = False  # flag 1 on %begin: the reply to a command this client sent
        try:
            # Read through a buffer: iterating the unbuffered pipe itself would be one
            # read(2) per byte, which throttles tmux's output to a trickle.
            for line in io.BufferedReader(self._proc.stdout, buffer_size=1 << 16):
                line = line.rstrip(b"\n")
                if block is not None:
                    if line.startswith((b"%end ", b"%error ")) and self._closes_block(line):
                        fut = self._pop_waiter() if ours else None
                        if fut is not None:
                            if line.startswith(b"%end"):
                                fut.set_result(block)
                            else:
                                fut.set_exception(TmuxCommandError("; ".join(block)))
                        block = None
                    else:
                        block.append(line.decode("utf-8", "replace"))
                    continue
                if line.startswith(b"%output "):
                    parts = line.split(b" ", 2)
                    data = parts[2] if len(parts) > 2 else b""
                    self._safe(self._on_output, parts[1].decode(), decode_output(data))
                elif line.startswith(b"%begin "):
                    block = []
                    ours = line.rsplit(b" ", 1)[-1] == b"1"
                elif line.startswith(b"%"):
                    name, *args = line.decode("utf-8", "replace").split(" ")
                    self._safe(self._on_event, name, args)
        except (OSError, ValueError):
            log.exception("tmux control reader failed")
        finally:
            self.closed.set()
            with self._lock:
                waiting, self._waiting = list(self._waiting), deque()
            for fut in waiting:
                if not fut.done():
                    fut.set_exception(ControlClosed("tmux control connection closed"))
            self._safe(self._on_event, "%closed", [])

    @staticmethod
    def _closes_block(line: bytes) -> bool:
        # "%end <time> <number> <flags>": a line of a command's own output could
        # begin with "%end" too, but not with this exact shape.
        parts = line.split(b" ")
        return len(parts) == 4 and all(p.isdigit() for p in parts[1:])

    def _pop_waiter(self) -> Future | None:
        with self._lock:
            return self._waiting.popleft() if self._waiting else None

    @staticmethod
    def _safe(fn: Callable, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a handler's bug must not kill the reader
            log.exception("tmux control handler failed")
