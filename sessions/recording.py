"""A session's recording as asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/), or
as asciicast v3 (https://docs.asciinema.org/manual/asciicast/v3/) with command markers.

The recording is the session's output stream (workers/backend.py): numbered frames, each
with the time it was written (field ``t``). The stream is bounded (VTERM_STREAM_MAXLEN
entries, VTERM_STREAM_MAX_CHARS characters), so a long session's recording keeps its
newest output; the first event's offset then says how far into the session it begins.

Version 3 adds, on the same timeline, a marker ("m", labelled with the command's text) where
each command started, and an exit event ("x", the shell's last exit code) once the session
has ended; its events carry the interval since the one before instead of the offset.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from asgiref.sync import sync_to_async

from .models import Command, TerminalSession
from .redis_state import async_client, output_stream_key

PAGE = 500  # stream entries per XRANGE
VERSIONS = (2, 3)
ENDED = (TerminalSession.Status.TERMINATED, TerminalSession.Status.LOST)


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


# -- asciicast v3 -----------------------------------------------------------------


def cast_header_v3(session: TerminalSession) -> dict:
    return {
        "version": 3,
        "term": {"cols": session.cols, "rows": session.rows, "type": "xterm-256color"},
        "timestamp": int(session.created_at.timestamp()),
        "title": session.name or str(session.pk),
        "env": {"SHELL": "/bin/bash"},
    }


class IntervalClock:
    """v3 event times: the interval since the event before, from CastClock's offsets (whole
    microseconds, so that the intervals add up to the offsets exactly)."""

    def __init__(self, start: float) -> None:
        self.clock = CastClock(start)
        self.prev_us = 0

    def interval(self, at: float | None) -> float:
        now_us = round(self.clock.offset(at) * 1_000_000)
        step, self.prev_us = now_us - self.prev_us, now_us
        return step / 1_000_000


def cast_event_v3(clock: IntervalClock, at: float | None, code: str, data: str) -> str:
    return json.dumps([clock.interval(at), code, data], ensure_ascii=False) + "\n"


async def _stream_start(session_id: str) -> float | None:
    """When the stream's oldest frame kept was written, if older ones were trimmed; else None."""
    first = await async_client().xrange(output_stream_key(session_id), count=1)
    if not first or int(first[0][0].split(b"-")[0]) <= 1:
        return None
    t = first[0][1].get(b"t")
    return float(t) if t else None


async def _command_marks(session: TerminalSession, since: float | None) -> AsyncIterator[tuple[float, str]]:
    """(when it started, its text) of each command that started, in the order they ran; with
    ``since``, only those that started then or later (their output is in the stream)."""
    qs = Command.objects.filter(session=session, started_at__isnull=False)
    if since is not None:
        qs = qs.filter(started_at__gte=datetime.fromtimestamp(since, tz=UTC))
    qs = qs.order_by("seq").values_list("seq", "started_at", "command")
    after = 0
    while True:  # page by page, by seq (the session's commands can be many)
        page = await sync_to_async(list)(qs.filter(seq__gt=after)[:PAGE])
        for _seq, started_at, text in page:
            yield started_at.timestamp(), text
        if len(page) < PAGE:
            return
        after = page[-1][0]


async def _exit_status(session: TerminalSession) -> str:
    """The shell's last ``$?``: its last command's exit code (what a bare ``exit`` exits with), "0"
    when none ran."""
    code = await (Command.objects.filter(session=session, exit_code__isnull=False).order_by("-seq")
                  .values_list("exit_code", flat=True).afirst())
    return str(code or 0)


async def recording_lines_v3(session: TerminalSession) -> AsyncIterator[str]:
    """The whole v3 .cast file, line by line: output frames and command markers merged in time order,
    then the exit event of an ended session."""
    yield json.dumps(cast_header_v3(session), ensure_ascii=False) + "\n"
    sid = str(session.pk)
    clock = IntervalClock(session.created_at.timestamp())
    marks = _command_marks(session, await _stream_start(sid))
    mark = await anext(marks, None)
    async for at, text in _stream_frames(sid):
        while mark is not None and at is not None and mark[0] <= at:
            yield cast_event_v3(clock, mark[0], "m", mark[1])
            mark = await anext(marks, None)
        yield cast_event_v3(clock, at, "o", text)
    while mark is not None:  # started, but its output is not in the stream yet
        yield cast_event_v3(clock, mark[0], "m", mark[1])
        mark = await anext(marks, None)
    if session.status in ENDED:
        ended = session.terminated_at.timestamp() if session.terminated_at else None
        yield cast_event_v3(clock, ended, "x", await _exit_status(session))


def recording_lines_for(session: TerminalSession, version: int) -> AsyncIterator[str]:
    return recording_lines_v3(session) if version == 3 else recording_lines(session)
