"""Output framing for the per-session Redis stream (pure logic, no I/O).

Frames have a bounded size, so that a flood (`yes`) makes more frames rather than
huge ones (flow control and replay work frame by frame), and the stream is bounded
by characters as well as by entries, so that a flood cannot fill Redis.
"""

from __future__ import annotations

from collections import deque

BLOCK = 64 * 1024  # characters per accounting block: the budget keeps few entries per session


def frame_pieces(text: str, limit: int) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters (at least one piece)."""
    if len(text) <= limit:
        return [text]
    return [text[i:i + limit] for i in range(0, len(text), limit)]


class StreamBudget:
    """The characters a session's stream holds; says where to trim when it holds too many."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.total = 0
        self._blocks: deque[list[int]] = deque()  # [first seq, characters], oldest first

    def add(self, seq: int, size: int) -> int | None:
        """Frame ``seq`` of ``size`` characters was written. Returns the seq to trim below, if any."""
        if self._blocks and self._blocks[-1][1] < BLOCK:
            self._blocks[-1][1] += size
        else:
            self._blocks.append([seq, size])
        self.total += size
        trim_below = None
        while self.total > self.max_chars and len(self._blocks) > 1:
            self.total -= self._blocks.popleft()[1]
            trim_below = self._blocks[0][0]
        return trim_below
