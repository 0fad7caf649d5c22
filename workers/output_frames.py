"""Output framing for the per-session Redis stream (pure logic, no I/O).

Frames have a bounded size, so that a flood (`yes`) makes more frames rather than
huge ones (flow control and replay work frame by frame), and the stream is bounded
by characters as well as by entries, so that a flood cannot fill Redis. The pacer
says when a session's gathered output goes out: at once while the backend's output
is quiet (a keystroke's echo), else with the next send, which carries every
session's output (one Redis pipeline for them all), and in full frames while a
session floods (each send costs the same round trips and wake-ups whatever its size).
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

    - While the output thread is idle (it sent nothing for ``interval``), output goes at once (an
      echo, a prompt).
    - Otherwise it waits for the thread's next send, at most ``interval`` after its last one, and goes
      with it: under load one send (one Redis pipeline) carries several sessions' output.
    - A session whose last send held ``flood_bytes`` or more is flooding: it sends only whole frames
      (``frame_max`` bytes; a frame of them decodes to at most ``frame_max`` characters) until
      ``flood_wait`` has passed since its last send, then all it has. A flood slower than
      ``flood_bytes`` per ``flood_wait`` ends the flooding by itself.
    """

    def __init__(self, *, interval: float, flood_bytes: int, flood_wait: float, frame_max: int) -> None:
        self.interval, self.flood_bytes, self.frame_max = interval, flood_bytes, frame_max
        self.flood_wait = max(flood_wait, interval) if flood_wait > 0 else 0.0
        self._last: dict[str, tuple[float, int]] = {}  # session -> (when its last send was, bytes in it)
        self._thread_last = float("-inf")  # when the output thread last sent anything

    def plan(self, pending: dict[str, int], now: float) -> tuple[dict[str, int], float | None]:
        """For the sessions with bytes gathered (name -> bytes): the bytes each sends now, and when to
        look again if some are left."""
        send: dict[str, int] = {}
        held: list[str] = []
        later = float("inf")
        # Compared as the times it returns, so that a look at exactly that time finds it due.
        idle = now >= self._thread_last + self.interval
        for name, size in pending.items():
            last = self._last.get(name)
            if last is not None and last[1] >= self.flood_bytes and now < last[0] + self.flood_wait:
                whole = size - size % self.frame_max
                if whole:
                    send[name] = whole
                if whole < size:
                    later = min(later, last[0] + self.flood_wait)
            elif idle:
                send[name] = size
            else:
                held.append(name)
        if held:
            if send:  # a send goes out now anyway: they join it
                for name in held:
                    send[name] = pending[name]
            else:
                later = min(later, self._thread_last + self.interval)
        return send, (later if later != float("inf") else None)

    def wakes(self, before: int, after: int) -> bool:
        """Whether output that took a session from ``before`` to ``after`` bytes gathered may make it
        due sooner than planned: its first bytes, or a frame filled."""
        return before == 0 or before < self.frame_max <= after

    def sent(self, name: str, size: int, now: float) -> None:
        self._last[name] = (now, size)
        self._thread_last = now

    def forget(self, name: str) -> None:
        self._last.pop(name, None)
