"""The interactive figures, measured alike on vterm and on a peer: keystroke echo and output rate over a
WebSocket terminal, and the latency of a `true` command.

The two WebSocket figures are written once, against a small ``Terminal`` (send typed text, receive the
next piece of output); vterm's protocol (docs/websocket.md) and terminado's each implement it. Both
use the same client library (websockets, synchronous), so the client costs the same on either side.

- keystroke echo: one character typed at an idle bash prompt, timed until the output that echoes it;
- output rate: ``cat`` of a large text file, typed at the prompt and followed by a marker the echo of
  the typed line cannot contain; MB of output received per second, from typing the line to the marker. The vterm viewer acknowledges every frame (flow control) and checks the seq.
"""

from __future__ import annotations

import json
import time
from typing import Protocol

import httpx
from websockets.sync.client import connect

from vterm.stream import SYNC_CONNECT_EXTRA, ws_url

LINE = ("0123456789abcdefghijklmnopqrstuvwxyz" * 3)[:99]  # + "\n": 100 bytes a line
# Typed after the cat; `$((6*7))` keeps the marker out of the echo of the typed line itself.
END_MARK = "END_42_MARK"
END_COMMAND = "echo END_$((6*7))_MARK"


class Terminal(Protocol):
    def type(self, text: str) -> None: ...
    def output(self, timeout: float) -> str: ...
    def close(self) -> None: ...


class VtermTerminal:
    """A vterm session's WebSocket (docs/websocket.md): acknowledges every output frame, checks seqs."""

    def __init__(self, url: str, token: str, session_id: str) -> None:
        self.ws = connect(ws_url(url, session_id), additional_headers={"Authorization": f"Bearer {token}"},
                          max_size=None, open_timeout=30, close_timeout=5, ping_interval=None, compression=None,
                          **SYNC_CONNECT_EXTRA)
        self.position: int | None = None
        self.seq_breaks = 0
        self.snapshots = 0  # screens sent in place of frames the viewer fell too far behind for
        while True:  # hello, then the screen
            frame = json.loads(self.ws.recv(timeout=60))
            if frame["type"] in ("hello", "snapshot"):
                self.position = frame["seq"]
            if frame["type"] == "snapshot":
                break

    def type(self, text: str) -> None:
        self.ws.send(json.dumps({"type": "input", "data": text}))

    def keys(self, keys: list[str]) -> None:
        self.ws.send(json.dumps({"type": "input", "keys": keys}))

    def output(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            kind = frame["type"]
            if kind == "snapshot":
                self.position = frame["seq"]
                self.snapshots += 1
            elif kind == "output":
                if self.position is not None and frame["seq"] != self.position + 1:
                    self.seq_breaks += 1
                self.position = frame["seq"]
                self.ws.send(json.dumps({"type": "ack", "seq": frame["seq"]}))
                return frame["data"]

    def clear_line(self) -> None:
        self.keys(["C-u"])

    def close(self) -> None:
        self.ws.close()


class TerminadoTerminal:
    """A terminado terminal's WebSocket: ["stdin", text] in, ["stdout", text] out."""

    seq_breaks = snapshots = 0  # terminado frames carry no seq; it sends everything

    def __init__(self, url: str) -> None:
        self.ws = connect(url, max_size=None, open_timeout=30, close_timeout=5, ping_interval=None,
                          compression=None, **SYNC_CONNECT_EXTRA)
        self.ws.send(json.dumps(["set_size", 40, 120]))

    def type(self, text: str) -> None:
        self.ws.send(json.dumps(["stdin", text]))

    def output(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            kind, *rest = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if kind == "stdout":
                return rest[0]

    def clear_line(self) -> None:
        self.type("\x15")  # C-u

    def close(self) -> None:
        self.ws.close()


def settle(term: Terminal, quiet: float = 0.3, timeout: float = 30) -> None:
    """Read output until none has come for ``quiet`` seconds (a prompt drawn, a command's tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            term.output(quiet)
        except TimeoutError:
            return
    raise TimeoutError(f"the terminal kept writing for {timeout} s")


def run_line(term: Terminal, line: str, timeout: float = 60) -> None:
    """Type ``line`` and wait until it and the end marker typed after it have run."""
    term.type(f"{line}; {END_COMMAND}\r")
    until_mark(term, timeout)
    settle(term)


def until_mark(term: Terminal, timeout: float) -> int:
    """Read until the end marker; the characters read (the marker's piece included)."""
    deadline = time.monotonic() + timeout
    tail, total = "", 0
    while True:
        data = term.output(max(0.01, deadline - time.monotonic()))
        total += len(data.encode())
        if END_MARK in tail[-len(END_MARK):] + data:
            return total
        tail = data


def keystroke_echo(term: Terminal, n: int) -> list[float]:
    """``n`` keystrokes at an idle prompt, each timed from sending to the output that echoes it (ms)."""
    return [(echoed - sent) / 1e6 for sent, echoed in keystroke_windows(term, n)]


def keystroke_windows(term: Terminal, n: int, pause: float = 0.0) -> list[tuple[int, int]]:
    """``n`` keystrokes at an idle prompt, ``pause`` seconds apart: each one's (sent, echoed), in
    CLOCK_MONOTONIC ns (the clock the stack's hop marks use: tests/bench/hop_profile.py)."""
    settle(term)
    windows = []
    for _ in range(n):
        sent = time.monotonic_ns()
        term.type("x")
        while "x" not in term.output(30):
            pass
        windows.append((sent, time.monotonic_ns()))
        if pause:
            time.sleep(pause)
    term.clear_line()
    settle(term)
    return windows


def output_rate(term: Terminal, path: str, timeout: float = 600) -> dict:
    """`cat path` typed at the prompt; MB/s of output (the line's echo included, a few dozen bytes) from
    typing it to the end marker."""
    settle(term)
    snapshots = term.snapshots
    t0 = time.perf_counter()
    term.type(f"cat {path}; {END_COMMAND}\r")
    received = until_mark(term, timeout)
    elapsed = time.perf_counter() - t0
    settle(term)
    return {"mb": received / 1e6, "seconds": elapsed, "mb_per_s": received / 1e6 / elapsed,
            "seq_breaks": term.seq_breaks, "snapshots": term.snapshots - snapshots}


def make_file_command(path: str, mb: float) -> str:
    """A shell command that writes ``mb`` MB of 100-byte text lines to ``path`` (same bytes everywhere)."""
    return f"yes {LINE} | head -c {int(mb * 1e6)} > {path}"


def vterm_command_latency(url: str, token: str, session_id: str, n: int, warmup: int = 20) -> list[float]:
    """`POST …/commands/` {"command": "true", "wait": 5}, ``n`` calls in a row on one session (ms)."""
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            r = http.post(f"/api/v1/sessions/{session_id}/commands/", json={"command": "true", "wait": 5})
            ms = (time.perf_counter() - t0) * 1000
            if r.status_code != 201 or r.json().get("exit_code") != 0:
                raise RuntimeError(f"command failed: HTTP {r.status_code} {r.text[:200]}")
            if i >= warmup:
                times.append(ms)
    return times
