"""A session's recording as asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/).

The recording is the session's output stream (workers/backend.py): numbered frames, each
with the time it was written (field ``t``). The stream is bounded (VTERM_STREAM_MAXLEN
entries, VTERM_STREAM_MAX_CHARS characters), so a long session's recording keeps its
newest output; the first event's offset then says how far into the session it begins.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from .models import TerminalSession
from .redis_state import async_client, output_stream_key

PAGE = 500  # stream entries per XRANGE


def cast_header(session: TerminalSession) -> dict:
    return {
        "version": 2,
        "width": session.cols,
        "height": session.rows,
        "timestamp": int(session.created_at.timestamp()),
        "title": session.name or str(session.pk),
        "env": {"SHELL": "/bin/bash", "TERM": "xterm-256color"},
    }


class CastClock:
    """Event times in seconds since the session began, never going backwards (two
    backends' clocks may differ after a migration); a frame without a time takes the
    one before it."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.last = 0.0

    def offset(self, at: float | None) -> float:
        if at is not None:
            self.last = max(self.last, at - self.start)
        return round(self.last, 6)


def cast_event(clock: CastClock, at: float | None, text: str) -> str:
    return json.dumps([clock.offset(at), "o", text], ensure_ascii=False) + "\n"


async def _stream_frames(session_id: str) -> AsyncIterator[tuple[float | None, str]]:
    r = async_client()
    key = output_stream_key(session_id)
    low = "-"
    while True:
        entries = await r.xrange(key, min=low, max="+", count=PAGE)
        for _eid, fields in entries:
            t = fields.get(b"t")
            yield (float(t) if t else None), fields.get(b"d", b"").decode("utf-8", "replace")
        if len(entries) < PAGE:
            return
        low = "(" + entries[-1][0].decode()  # exclusive: after the last one read


async def recording_lines(session: TerminalSession) -> AsyncIterator[str]:
    """The whole .cast file, line by line (header first), read from Redis page by page."""
    yield json.dumps(cast_header(session), ensure_ascii=False) + "\n"
    clock = CastClock(session.created_at.timestamp())
    async for at, text in _stream_frames(str(session.pk)):
        yield cast_event(clock, at, text)
