"""`vterm attach`: a session in the local terminal over the WebSocket.

The local terminal goes raw (every key goes to the remote shell, Ctrl-C included);
window changes become resize frames; the detach key (Ctrl-] by default) leaves the
session running; a dropped connection reconnects and resumes after the last seq.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import sys
import termios
import tty

from .client import AsyncClient
from .errors import StreamClosed
from .types import Frame, Screen, Session

COLS_RANGE, ROWS_RANGE = (10, 1000), (2, 500)
ENDED = ("terminated", "lost", "terminating")
FIRST_FRAME_WAIT = 2.0


def _clamp(v: int, lo_hi: tuple[int, int]) -> int:
    return max(lo_hi[0], min(lo_hi[1], v))


def local_size(fd: int) -> tuple[int, int]:
    size = os.get_terminal_size(fd)
    return _clamp(size.columns, COLS_RANGE), _clamp(size.lines, ROWS_RANGE)


def paint(lines: list[str], cursor: tuple[int, int] | None = None) -> bytes:
    """Clear the local screen and draw ``lines`` (a screen or snapshot), cursor last."""
    out = "\x1b[H\x1b[2J" + "\r\n".join(lines)
    if cursor is not None:
        out += f"\x1b[{cursor[1] + 1};{cursor[0] + 1}H"
    return out.encode()


class Attachment:
    def __init__(self, client: AsyncClient, session: Session, detach_key: bytes, fd_in: int, fd_out: int) -> None:
        self.client = client
        self.session = session
        self.detach_key = detach_key
        self.fd_in, self.fd_out = fd_in, fd_out
        self.done: asyncio.Future[tuple[int, str]] | None = None
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending: set[asyncio.Task] = set()

    def _write(self, data: bytes) -> None:
        while data:
            n = os.write(self.fd_out, data)
            data = data[n:]

    def _finish(self, code: int, message: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result((code, message))

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.pending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, StreamClosed):  # a drop is mended by the reader's reconnect
                self._finish(1, f"vterm: {exc}")

    def on_stdin(self) -> None:
        try:
            data = os.read(self.fd_in, 4096)
        except OSError:
            data = b""
        if not data:
            self._finish(0, "[stdin closed: detached]")
            return
        head, sep, _ = data.partition(self.detach_key)
        if head:
            text = self.decoder.decode(head)
            if text:
                self._spawn(self.term.send_input(text))
        if sep:
            self._finish(0, f"[detached from {self.session.name or self.session.id}; it keeps running]")

    def on_winch(self) -> None:
        cols, rows = local_size(self.fd_in)
        self._spawn(self.term.resize(cols, rows))

    def on_frame(self, frame: Frame) -> None:
        if frame.type == "output":
            self._write(frame.data.encode("utf-8", "replace"))
        elif frame.type == "snapshot" and frame.lines is not None:
            cur = frame.raw.get("cursor") or {}
            self._write(paint(frame.lines, (cur["x"], cur["y"]) if "x" in cur and "y" in cur else None))
        elif frame.type == "status" and frame.status in ENDED:
            self._finish(0, f"[session {frame.status}{': ' + frame.raw['reason'] if frame.raw.get('reason') else ''}]")
        elif frame.type == "error":
            self._write(f"\r\n[vterm: {frame.code}: {frame.message}]\r\n".encode())

    def on_reconnect(self, attempt: int) -> None:
        if attempt == 1:
            self._write(b"\r\n[connection lost: reconnecting...]\r\n")

    async def read_frames(self) -> None:
        try:
            async for frame in self.term:
                self.on_frame(frame)
            self._finish(0, "[the server closed the terminal]")
        except Exception as exc:  # noqa: BLE001 - any end of the stream ends the attachment, with its reason
            self._finish(1, f"vterm: {exc}")

    async def run(self) -> tuple[int, str]:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        # Resize first (REST answers once the terminal has it), so the first screen drawn has our size.
        cols, rows = local_size(self.fd_in)
        if (cols, rows) != (self.session.cols, self.session.rows):
            await self.client.resize(self.session, cols, rows)
        self.term = await self.client.terminal(self.session, reconnect=True)
        self.term.on_reconnect = self.on_reconnect
        self.term.on_resumed = lambda: self._write(b"[reconnected]\r\n")
        self.term.reconnect_attempts = 40  # a person waits through a server restart (about 3 minutes)
        # The server sends a snapshot of the screen after hello; where it does not, read the screen.
        first = await self.term.recv(timeout=FIRST_FRAME_WAIT)
        if first is None or first.type != "snapshot":
            screen: Screen = await self.client.screen(self.session)
            self._write(paint(screen.lines, (screen.cursor_x, screen.cursor_y)))
        if first is not None:
            self.on_frame(first)
        reader = asyncio.ensure_future(self.read_frames())
        loop.add_reader(self.fd_in, self.on_stdin)
        loop.add_signal_handler(signal.SIGWINCH, self.on_winch)
        try:
            return await self.done
        finally:
            loop.remove_reader(self.fd_in)
            loop.remove_signal_handler(signal.SIGWINCH)
            reader.cancel()
            for task in list(self.pending):
                task.cancel()
            await self.term.close()


async def attach(client: AsyncClient, session: Session, *, detach_key: bytes = b"\x1d") -> int:
    """Attach the local terminal to ``session`` until detached or the session ends; the exit code."""
    fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
    if not os.isatty(fd_in):
        print("vterm: attach needs a terminal on stdin (use `vterm run` from scripts)", file=sys.stderr)
        return 2
    saved = termios.tcgetattr(fd_in)
    tty.setraw(fd_in)
    try:
        code, message = await Attachment(client, session, detach_key, fd_in, fd_out).run()
    finally:
        termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
    print(f"\r\n{message}", file=sys.stderr if code else sys.stdout, flush=True)
    return code
