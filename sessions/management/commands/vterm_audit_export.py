"""Export the audit trail as JSON lines (one event per line, oldest first)."""

from __future__ import annotations

import contextlib
import sys
import uuid
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from sessions.audit import audit_events, audit_export_lines


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    dt = parse_datetime(value)
    if dt is None:
        raise CommandError(f"not an ISO 8601 date-time: {value!r}")
    return dt


class Command(BaseCommand):
    help = "Export audit events as JSON lines, optionally narrowed by time, user, action or session."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="ISO 8601 date-time: events at or after it")
        parser.add_argument("--until", help="ISO 8601 date-time: events before it")
        parser.add_argument("--user", help="username")
        parser.add_argument("--action", help="e.g. command.run, session.create")
        parser.add_argument("--session", help="session id")
        parser.add_argument("-o", "--output", help="file to write (default: standard output)")

    def handle(self, *args, **opts):
        if opts["session"]:
            try:
                uuid.UUID(opts["session"])
            except ValueError:
                raise CommandError(f"not a session id: {opts['session']!r}") from None
        events = audit_events(since=_when(opts["since"]), until=_when(opts["until"]), user=opts["user"],
                              action=opts["action"], session_id=opts["session"]).iterator(chunk_size=2000)
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(open(opts["output"], "w", encoding="utf-8")) if opts["output"] else sys.stdout
            n = 0
            for line in audit_export_lines(events):
                out.write(line)
                n += 1
        self.stderr.write(f"{n} audit event(s) exported")
