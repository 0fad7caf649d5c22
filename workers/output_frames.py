"""Output framing for the per-session Redis stream (pure logic, no I/O).

Frames have a bounded size, so that a flood (`yes`) makes more frames rather than
huge ones (flow control and replay work frame by frame), and the stream is bounded
by characters as well as by entries, so that a flood cannot fill Redis. The pacer
says when a session's gathered output goes out: at once after a quiet spell (a
keystroke's echo), in full frames while it floods (each send costs the same
round trips and wake-ups whatever its size).
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


class FloodPacer:
    """When each session's gathered output is sent; the caller keeps the bytes and the clock.

    - A session that sent nothing for ``interval`` sends at once (an echo, a prompt).
    - Otherwise what comes is gathered until ``interval`` after its last send, as before.
    - A session whose last send held ``flood_bytes`` or more is flooding: it sends only whole frames
      (``frame_max`` bytes; a frame of them decodes to at most ``frame_max`` characters) until
      ``flood_wait`` has passed since its last send, then all it has. A flood slower than
      ``flood_bytes`` per ``flood_wait`` ends the flooding by itself.
    """

    def __init__(self, *, interval: float, flood_bytes: int, flood_wait: float, frame_max: int) -> None:
        self.interval, self.flood_bytes, self.frame_max = interval, flood_bytes, frame_max
        self.flood_wait = max(flood_wait, interval) if flood_wait > 0 else 0.0
        self._last: dict[str, tuple[float, int]] = {}  # session -> (when its last send was, bytes in it)

    def plan(self, name: str, pending: int, now: float) -> tuple[int, float]:
        """For a session with ``pending`` bytes gathered: (bytes to send now, when to look again if
        some are left)."""
        last = self._last.get(name)
        if last is None:
            return pending, now
        at, size = last
        if size >= self.flood_bytes and now - at < self.flood_wait:
            return pending - pending % self.frame_max, at + self.flood_wait
        if now - at >= self.interval:
            return pending, now
        return 0, at + self.interval

    def wakes(self, before: int, after: int) -> bool:
        """Whether output that took a session from ``before`` to ``after`` bytes gathered may make it
        due sooner than planned: its first bytes, or a frame filled."""
        return before == 0 or before < self.frame_max <= after

    def sent(self, name: str, size: int, now: float) -> None:
        self._last[name] = (now, size)

    def forget(self, name: str) -> None:
        self._last.pop(name, None)
