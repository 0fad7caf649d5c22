"""A WebSocket terminal client for the tests and the figures: keeps the frames it got and checks their seq."""

from __future__ import annotations

import json
import time

from websockets.sync.client import connect

from vterm.stream import SYNC_CONNECT_EXTRA  # a connection that outlives a `with` block


def ws_url(base_url: str, session_id: str, since: int | None = None) -> str:
    url = base_url.replace("http", "ws", 1) + f"/ws/v1/sessions/{session_id}/"
    return url + (f"?since={since}" if since is not None else "")


class Viewer:
    """One connection. Output frames must follow each other by one, or follow a snapshot."""

    def __init__(self, base_url: str, session_id: str, *, token: str | None = None, since: int | None = None,
                 headers: dict | None = None, ack: bool = True, read_hello: bool = True) -> None:
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        # No keepalive pings: a viewer that does not read (on purpose) would time its own pings out.
        self.ws = connect(ws_url(base_url, session_id, since), additional_headers=hdrs, max_size=None,
                          open_timeout=30, close_timeout=5, ping_interval=None, **SYNC_CONNECT_EXTRA)
        self.ack = ack
        self.frames: list[dict] = []
        self.outputs: list[tuple[int, str]] = []  # (seq, data) in the order received
        self.position: int | None = since  # the seq this viewer's screen is at
        self.breaks: list[str] = []  # seq rule violations
        self.hello = self.recv() if read_hello else None
        # Without `since` the server sends the screen next. Waiting for it keeps a test's
        # "run, then read the output frames" honest: output that ended before the screen was
        # taken shows in the snapshot, not as frames (seq rule), so a test that did not wait
        # could look for frames that are rightly never sent.
        self.snapshot = self.until(lambda f: f["type"] == "snapshot") if read_hello and since is None else None

    def send(self, **frame) -> None:
        self.ws.send(json.dumps(frame))

    def recv(self, timeout: float = 60) -> dict:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.frames.append(frame)
        kind = frame.get("type")
        if (kind == "hello" and self.position is None) or kind == "snapshot":
            self.position = frame["seq"]
        elif kind == "output":
            if self.position is not None and frame["seq"] != self.position + 1:
                self.breaks.append(f"output seq {frame['seq']} after {self.position}")
            self.position = frame["seq"]
            self.outputs.append((frame["seq"], frame["data"]))
            if self.ack:
                self.send(type="ack", seq=frame["seq"])
        return frame

    def until(self, predicate, timeout: float = 120) -> dict:
        """Read frames until one matches; fails after ``timeout`` seconds (a hang, not a timing check)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching frame in {timeout}s; last frames: {self.frames[-3:]}")
            frame = self.recv(timeout=left)
            if predicate(frame):
                return frame

    def until_output(self, needle: str, timeout: float = 120, start: int = 0) -> None:
        """Read until the output received (from output frame number ``start`` on) contains ``needle``."""
        tail = "".join(d for _, d in self.outputs[start:])
        deadline = time.monotonic() + timeout
        while needle not in tail:
            tail = tail[-len(needle):]
            self.until(lambda f: f["type"] == "output", max(0.1, deadline - time.monotonic()))
            tail += self.outputs[-1][1]

    def command_end(self, ref: str, timeout: float = 120) -> dict:
        return self.until(lambda f: f["type"] == "command" and f.get("ref") == ref
                          and f["command"]["status"] not in ("queued", "running"), timeout)

    def output(self) -> str:
        return "".join(d for _, d in self.outputs)

    def close(self) -> None:
        self.ws.close()
