"""The WebSocket terminal of a session (API.md "WebSocket terminal"), sync and asyncio.

A ``Terminal`` remembers the last output ``seq`` it handed out; after a dropped
connection it reconnects with ``?since=<seq>``, so the frames it yields have no gap
and no repeat (or a ``snapshot`` frame where the server no longer has the gap).
"""

from __future__ import annotations

import inspect
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection as AsyncConnection
from websockets.asyncio.client import connect as async_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .errors import (
    AuthError,
    ConnectionFailed,
    NotFound,
    RateLimited,
    StreamClosed,
    Unavailable,
    VtermError,
    error_for_response,
)
from .types import Frame

# Close codes of API.md that mean "do not try again".
FINAL_CLOSE = {4401: AuthError, 4403: AuthError, 4404: NotFound}
NORMAL_CLOSE = {1000, 1001}
RECONNECT_ATTEMPTS = 8
MAX_FRAME = 16 * 1024 * 1024
DEFAULT_ACK_EVERY = 32 * 1024
# websockets ≥ 17.1 wants `legacy=True` for a sync connection that outlives a `with` block.
SYNC_CONNECT_EXTRA = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


def ws_url(base_url: str, session_id: str, since: int | None = None) -> str:
    """``http(s)://host/`` → ``ws(s)://host/ws/v1/sessions/<id>/[?since=N]``."""
    parts = urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + f"/ws/v1/sessions/{session_id}/"
    query = urlencode({"since": since}) if since is not None else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _with_since(url: str, since: int | None) -> str:
    if since is None:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode({"since": since}), ""))


def _handshake_error(url: str, exc: Exception) -> VtermError:
    if isinstance(exc, InvalidStatus):
        resp = exc.response
        body: Any = resp.body.decode("utf-8", "replace") if resp.body else None
        try:
            body = json.loads(body) if body else None
        except ValueError:
            pass
        return error_for_response(resp.status_code, body, resp.headers, resp.reason_phrase)
    if isinstance(exc, InvalidHandshake):
        return VtermError(f"WebSocket handshake with {url} failed: {exc}")
    return ConnectionFailed(f"cannot open the WebSocket {url}: {exc}")


def _not_hello_error(first: Frame | None) -> VtermError:
    """What a connection that did not begin with ``hello`` says (the server closes it next)."""
    if first is not None and first.type == "error" and first.code == "too_many_connections":
        # Close 4429 follows: the user's WebSockets are at VTERM_WS_MAX_PER_USER; one must close first.
        return RateLimited(f"WebSocket refused: {first.message}", None, first.raw)
    return VtermError(f"expected a hello frame first, got {first!r}")


def _closed_error(exc: ConnectionClosed) -> VtermError | None:
    """The exception for a close that must not be retried; None when reconnecting may help."""
    frame = exc.rcvd
    code = frame.code if frame else None
    reason = frame.reason if frame else ""
    if code in FINAL_CLOSE:
        default = {4401: "not authenticated", 4403: "not allowed", 4404: "no such session"}[code]
        return FINAL_CLOSE[code](f"WebSocket closed: {reason or default} ({code})", None)
    if code == 1009:
        return StreamClosed(f"WebSocket closed: frame too large ({reason or 1009})", code)
    return None


class _Base:
    def __init__(self, url: str, token: str, *, since: int | None = None, reconnect: bool = True,
                 open_timeout: float = 30.0, auto_ack: bool = True) -> None:
        self.url = url
        self.token = token
        self.reconnect = reconnect
        self.open_timeout = open_timeout
        self.last_seq: int | None = since
        self.hello: Frame | None = None
        self.closed = False
        # Called with the attempt number (1, 2, ...) before each reconnect, e.g. to tell the user.
        self.on_reconnect: Callable[[int], None] | None = None
        self.reconnect_attempts = RECONNECT_ATTEMPTS
        self.on_resumed: Callable[[], None] | None = None  # called once a reconnect has succeeded
        # Flow control (API.md hello "flow"): the server pauses a viewer whose unacknowledged
        # output passes its high watermark, so frames handed out are acknowledged as we go.
        self.auto_ack = auto_ack
        self._unacked = 0
        self._ack_every = DEFAULT_ACK_EVERY

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _accept(self, raw: str | bytes) -> Frame | None:
        """Parse one frame; drop output already handed out (overlap of a resume)."""
        frame = Frame.from_json(json.loads(raw))
        if frame.type == "hello":
            self.hello = frame
            self._unacked = 0
            flow = frame.raw.get("flow") or {}
            if isinstance(flow.get("low"), int) and flow["low"] > 0:
                self._ack_every = max(1, min(flow["low"], flow.get("high", flow["low"]) // 4))
            if self.last_seq is None and frame.seq is not None:
                self.last_seq = frame.seq
        elif frame.type == "output" and frame.seq is not None:
            if self.last_seq is not None and frame.seq <= self.last_seq:
                return None
            self.last_seq = frame.seq
            self._unacked += len(frame.data)
        elif frame.type == "snapshot" and frame.seq is not None:
            self.last_seq = frame.seq
            self._unacked += sum(len(line) for line in frame.lines or [])
        return frame

    def _ack_due(self) -> int | None:
        """The seq to acknowledge now, if enough output has been handed out since the last ack."""
        if self.auto_ack and self._unacked >= self._ack_every and self.last_seq is not None:
            self._unacked = 0
            return self.last_seq
        return None

    @staticmethod
    def _msg(kind: str, **fields: Any) -> str:
        return json.dumps({"type": kind, **{k: v for k, v in fields.items() if v is not None}})

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(5.0, 0.2 * 2 ** attempt) * (0.5 + random.random() / 2)


class Terminal(_Base):
    """A synchronous WebSocket terminal. Iterate for frames; ``send_*`` to act.

    Thread-safe for one reader and any number of senders.
    """

    _ws: ClientConnection | None = None

    def connect(self) -> Frame:
        """Open (or reopen, resuming after ``last_seq``) and return the ``hello`` frame."""
        url = _with_since(self.url, self.last_seq)
        try:
            self._ws = connect(url, additional_headers=self._headers(), open_timeout=self.open_timeout,
                               max_size=MAX_FRAME, compression=None, **SYNC_CONNECT_EXTRA)
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise _handshake_error(url, exc) from exc
        first = self._recv_frame(timeout=self.open_timeout)
        if first is None or first.type != "hello":
            raise _not_hello_error(first)
        return first

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        if self._ws is not None:
            self._ws.close()

    def _recv_frame(self, timeout: float | None) -> Frame | None:
        assert self._ws is not None
        while True:
            try:
                raw = self._ws.recv(timeout=timeout)
            except ConnectionClosed as exc:
                err = _closed_error(exc)
                if err:
                    raise err from exc
                raise
            frame = self._accept(raw)
            if frame is not None:
                return frame

    def recv(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None after ``timeout`` seconds. Reconnects if allowed.

        Output handed out by earlier calls counts as processed: it is acknowledged here.
        """
        attempt = 0
        while True:
            try:
                due = self._ack_due()
                if due is not None and self._ws is not None:
                    self._ws.send(self._msg("ack", seq=due))
                return self._recv_frame(timeout)
            except TimeoutError:
                return None
            except (ConnectionClosed, OSError) as exc:
                if self.closed or not self.reconnect:
                    raise StreamClosed("the WebSocket closed", getattr(getattr(exc, "rcvd", None), "code", None)) from exc
                if isinstance(exc, ConnectionClosed) and exc.rcvd and exc.rcvd.code in NORMAL_CLOSE:
                    raise StreamClosed(f"the server closed the terminal: {exc.rcvd.reason or 'normal close'}",
                                       exc.rcvd.code) from exc
            while True:
                if attempt >= self.reconnect_attempts:
                    raise StreamClosed(f"lost the WebSocket and {attempt} reconnects failed")
                time.sleep(self._backoff(attempt))
                attempt += 1
                if self.on_reconnect:
                    self.on_reconnect(attempt)
                try:
                    self.connect()
                    if self.on_resumed:
                        self.on_resumed()
                    break
                except (ConnectionFailed, StreamClosed, Unavailable, ConnectionClosed):
                    continue

    def __iter__(self) -> Iterator[Frame]:
        while True:
            try:
                frame = self.recv()
            except StreamClosed as exc:
                if self.closed or exc.code in NORMAL_CLOSE:
                    return
                raise
            if frame is not None:
                yield frame

    def _send(self, text: str) -> None:
        if self._ws is None:
            raise StreamClosed("not connected")
        try:
            self._ws.send(text)
        except ConnectionClosed as exc:
            raise StreamClosed("the WebSocket closed", exc.rcvd.code if exc.rcvd else None) from exc

    def send_input(self, data: str) -> None:
        """Keystrokes, literally (``"\\r"`` is Enter, ``"\\x03"`` Ctrl-C)."""
        self._send(self._msg("input", data=data))

    def resize(self, cols: int, rows: int) -> None:
        self._send(self._msg("resize", cols=cols, rows=rows))

    def run(self, command: str, *, ref: str | None = None, timeout: float | None = None) -> None:
        """Submit a command; its ``command`` frames carry ``ref`` back."""
        self._send(self._msg("run", command=command, ref=ref, timeout=timeout))

    def interrupt(self) -> None:
        self._send(self._msg("interrupt"))

    def ack(self, seq: int) -> None:
        self._send(self._msg("ack", seq=seq))

    def ping(self) -> None:
        self._send(self._msg("ping"))


class AsyncTerminal(_Base):
    """The asyncio twin of ``Terminal``: ``async for frame in term``."""

    _ws: AsyncConnection | None = None

    async def connect(self) -> Frame:
        url = _with_since(self.url, self.last_seq)
        try:
            self._ws = await async_connect(url, additional_headers=self._headers(), open_timeout=self.open_timeout,
                                           max_size=MAX_FRAME, compression=None)
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise _handshake_error(url, exc) from exc
        first = await self._recv_frame(timeout=self.open_timeout)
        if first is None or first.type != "hello":
            raise _not_hello_error(first)
        return first

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        if self._ws is not None:
            await self._ws.close()

    async def _recv_frame(self, timeout: float | None) -> Frame | None:
        import asyncio

        assert self._ws is not None
        while True:
            try:
                raw = await asyncio.wait_for(self._ws.recv(), timeout)
            except ConnectionClosed as exc:
                err = _closed_error(exc)
                if err:
                    raise err from exc
                raise
            frame = self._accept(raw)
            if frame is not None:
                return frame

    async def recv(self, timeout: float | None = None) -> Frame | None:
        import asyncio

        attempt = 0
        while True:
            try:
                due = self._ack_due()
                if due is not None and self._ws is not None:
                    await self._ws.send(self._msg("ack", seq=due))
                return await self._recv_frame(timeout)
            except TimeoutError:
                return None
            except (ConnectionClosed, OSError) as exc:
                if self.closed or not self.reconnect:
                    raise StreamClosed("the WebSocket closed", getattr(getattr(exc, "rcvd", None), "code", None)) from exc
                if isinstance(exc, ConnectionClosed) and exc.rcvd and exc.rcvd.code in NORMAL_CLOSE:
                    raise StreamClosed(f"the server closed the terminal: {exc.rcvd.reason or 'normal close'}",
                                       exc.rcvd.code) from exc
            while True:
                if attempt >= self.reconnect_attempts:
                    raise StreamClosed(f"lost the WebSocket and {attempt} reconnects failed")
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                if self.on_reconnect:
                    self.on_reconnect(attempt)
                try:
                    await self.connect()
                    if self.on_resumed:
                        self.on_resumed()
                    break
                except (ConnectionFailed, StreamClosed, Unavailable, ConnectionClosed):
                    continue

    async def __aiter__(self) -> AsyncIterator[Frame]:
        while True:
            try:
                frame = await self.recv()
            except StreamClosed as exc:
                if self.closed or exc.code in NORMAL_CLOSE:
                    return
                raise
            if frame is not None:
                yield frame

    async def _send(self, text: str) -> None:
        if self._ws is None:
            raise StreamClosed("not connected")
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise StreamClosed("the WebSocket closed", exc.rcvd.code if exc.rcvd else None) from exc

    async def send_input(self, data: str) -> None:
        await self._send(self._msg("input", data=data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._send(self._msg("resize", cols=cols, rows=rows))

    async def run(self, command: str, *, ref: str | None = None, timeout: float | None = None) -> None:
        await self._send(self._msg("run", command=command, ref=ref, timeout=timeout))

    async def interrupt(self) -> None:
        await self._send(self._msg("interrupt"))

    async def ack(self, seq: int) -> None:
        await self._send(self._msg("ack", seq=seq))

    async def ping(self) -> None:
        await self._send(self._msg("ping"))
