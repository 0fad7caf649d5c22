"""Flow control of one WebSocket viewer: what it may be sent now (pure logic, no I/O).

The client acknowledges output it has processed (`{"type": "ack", "seq"}`). Output sent
and not yet acknowledged is "in flight". Above the high watermark the viewer is paused:
live frames are not sent (nor buffered: the Redis stream keeps them); once acks bring
the in-flight amount under the low watermark, it resumes from the stream. A viewer that
was held back by more than ``skip`` characters gets a snapshot of the screen instead of
the backlog, so that `yes` followed by Ctrl-C shows the prompt at once. xterm.js's
flow-control guide describes the watermarks: https://xtermjs.org/docs/guides/flowcontrol/

The window counts what the server sent, never what the client says: an ack above the
highest seq sent is refused (a client acking far ahead would otherwise unpause itself
and make the server send without bound, into Daphne's unbounded send buffer).
"""

from __future__ import annotations

from collections import deque


class AckBeyondSent(ValueError):
    """The client acknowledged output it was never sent."""


class OutputWindow:
    def __init__(self, *, high: int, low: int, skip: int) -> None:
        self.high, self.low, self.skip = high, low, skip
        self.sent = 0  # the last seq the viewer has (sent as output, or covered by a snapshot)
        self.highest = 0  # the highest seq ever sent (or given as `since`): acks above it are refused
        self.latest = 0  # the newest seq known to exist
        self.paused = False
        self.held = 0  # characters of live output held back since the viewer last kept up
        self._inflight: deque[tuple[int, int]] = deque()
        self.inflight = 0

    def start(self, seq: int, latest: int) -> None:
        """The viewer has everything up to ``seq``; output up to ``latest`` exists."""
        self.sent = seq
        self.highest = max(self.highest, seq)
        self.latest = max(self.latest, latest, seq)

    def record_sent(self, seq: int, size: int) -> None:
        """Output (or a snapshot) up to ``seq``, ``size`` characters, went to the viewer."""
        self.sent = max(self.sent, seq)
        self.highest = max(self.highest, seq)
        self.latest = max(self.latest, seq)
        self._inflight.append((seq, size))
        self.inflight += size
        if self.inflight >= self.high:
            self.paused = True
        if self.sent >= self.latest:
            self.held = 0

    def record_snapshot(self, seq: int, size: int) -> None:
        self.held = 0
        self.record_sent(seq, size)
        self.sent = seq  # a snapshot may also move back (the stream was reset)

    def saw_live(self, seq: int, size: int) -> bool:
        """A live frame arrived. True when it should go to the viewer right now."""
        self.latest = max(self.latest, seq)
        if seq <= self.sent:
            return False
        if self.paused or seq != self.sent + 1:
            if self.paused:
                self.held += size
            return False
        return True

    def ack(self, seq: int) -> bool:
        """The viewer processed everything up to ``seq``. True when it was paused and may resume.

        Raises AckBeyondSent when ``seq`` is above anything sent: nothing is released then."""
        if seq > self.highest:
            raise AckBeyondSent(f"{seq} is beyond the last output sent to this viewer ({self.highest}).")
        while self._inflight and self._inflight[0][0] <= seq:
            self.inflight -= self._inflight.popleft()[1]
        if self.paused and self.inflight <= self.low:
            self.paused = False
            return True
        return False

    @property
    def behind(self) -> bool:
        return self.sent < self.latest

    @property
    def too_far_behind(self) -> bool:
        return self.held > self.skip
