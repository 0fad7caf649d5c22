"""Retention: the purge that keeps the database from growing without bound.

What goes (settings.VTERM ``RETENTION_*``; docs/operations.md, "Retention and sizing"):

- ended sessions (terminated or lost), ``RETENTION_SESSIONS_DAYS`` after they ended, with their
  commands, their status events and their output stream in Redis;
- a session's finished commands older than its last ``RETENTION_COMMANDS`` (live sessions too);
- audit events older than ``RETENTION_AUDIT_DAYS`` (kept longer: they outlive their sessions).

The command path writes the same tables, and SQLite has one writer at a time. So nothing is
deleted by one big statement: each batch is at most ``RETENTION_BATCH_SIZE`` rows, chosen by a read
and removed by one DELETE in its own short transaction, with ``RETENTION_BATCH_PAUSE`` between
batches, and a run stops after ``RETENTION_RUN_SECONDS`` (the next run goes on). Every query
follows an index: ``created_at``/``status`` for sessions, ``(session, seq)`` for commands, ``at``
for audit events.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from . import metrics
from .models import AuditEvent, Command, SessionEvent, TerminalSession
from .redis_state import output_stream_key, retention_last_key, retention_lock_key, sync_client

log = logging.getLogger(__name__)

ENDED = (TerminalSession.Status.TERMINATED, TerminalSession.Status.LOST)


@dataclass
class PurgeReport:
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(metrics.RETENTION_KINDS, 0))
    batches: int = 0
    complete: bool = True  # False: the run's time ran out with rows still to remove

    def as_dict(self) -> dict:
        return {"deleted": dict(self.deleted), "batches": self.batches, "complete": self.complete}


class _Batches:
    """Deletes in bounded batches, counting them, until done or out of time."""

    def __init__(self, batch_size: int, pause: float, run_seconds: float) -> None:
        self.batch_size = max(1, batch_size)
        self.pause = pause
        self.deadline = time.monotonic() + run_seconds
        self.report = PurgeReport()

    def out_of_time(self) -> bool:
        if time.monotonic() >= self.deadline:
            self.report.complete = False
        return not self.report.complete

    def delete(self, kind: str, candidates: QuerySet) -> bool:
        """Delete every row of ``candidates``, a batch at a time; False if the time ran out first."""
        while not self.out_of_time():
            # order_by(): no sort (the models' default orderings), the first rows the index gives.
            ids = list(candidates.order_by().values_list("pk", flat=True)[: self.batch_size])
            if not ids:
                return True
            # The candidates' own conditions again: a row that changed since the read stays.
            deleted = candidates.filter(pk__in=ids).delete()[1].get(candidates.model._meta.label, 0)
            self._count(kind, deleted)
            if kind == "sessions":
                sync_client().unlink(*[output_stream_key(str(i)) for i in ids])
            time.sleep(self.pause)  # lets a writer waiting for the lock (SQLite) have it
        return False

    def _count(self, kind: str, n: int) -> None:
        self.report.batches += 1
        self.report.deleted[kind] += n
        if n:
            metrics.count(metrics.RETENTION_DELETED, [kind], n)


def _cutoff(now: datetime, days: float) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def _purge_ended_sessions(run: _Batches, cutoff: datetime) -> bool:
    # created_at bounds the scan by its index: a session that ended before the cutoff began before it.
    old = TerminalSession.objects.filter(
        Q(terminated_at__lt=cutoff) | Q(terminated_at__isnull=True, last_activity__lt=cutoff),
        created_at__lt=cutoff, status__in=ENDED)
    while not run.out_of_time():
        ids = list(old.order_by().values_list("pk", flat=True)[: run.batch_size])
        if not ids:
            return True
        # Children first, each in bounded batches: deleting a session would take all its
        # commands in one statement.
        if not (run.delete("commands", Command.objects.filter(session_id__in=ids))
                and run.delete("session_events", SessionEvent.objects.filter(session_id__in=ids))
                and run.delete("sessions", old.filter(pk__in=ids))):
            return False
    return False


def _purge_commands_over_cap(run: _Batches, keep: int) -> bool:
    """Each session keeps its last ``keep`` commands; older finished ones go."""
    # Read at once: a cursor left open across the deletes would hold SQLite's WAL back.
    crowded = list(TerminalSession.objects.filter(command_count__gt=keep).order_by()
                   .values_list("pk", "command_count"))
    for session_id, count in crowded:
        older = Command.objects.filter(session_id=session_id, seq__lte=count - keep, status__in=Command.FINAL)
        if not run.delete("commands", older):
            return False
    return True


def retention_purge(*, now: datetime | None = None) -> PurgeReport | None:
    """One purge run with the settings' retention; None when another run holds the lock."""
    cfg = settings.VTERM
    run = _Batches(cfg["RETENTION_BATCH_SIZE"], cfg["RETENTION_BATCH_PAUSE"], cfg["RETENTION_RUN_SECONDS"])
    r = sync_client()
    token = uuid.uuid4().hex
    if not r.set(retention_lock_key(), token, nx=True, ex=int(cfg["RETENTION_RUN_SECONDS"]) + 60):
        return None
    try:
        now = now or timezone.now()
        sessions_cutoff = _cutoff(now, cfg["RETENTION_SESSIONS_DAYS"])
        audit_cutoff = _cutoff(now, cfg["RETENTION_AUDIT_DAYS"])
        ok = sessions_cutoff is None or _purge_ended_sessions(run, sessions_cutoff)
        ok = ok and (cfg["RETENTION_COMMANDS"] <= 0 or _purge_commands_over_cap(run, cfg["RETENTION_COMMANDS"]))
        if ok and audit_cutoff is not None:
            run.delete("audit_events", AuditEvent.objects.filter(at__lt=audit_cutoff))
        r.set(retention_last_key(), time.time())
    finally:
        if r.get(retention_lock_key()) == token.encode():
            r.delete(retention_lock_key())
    report = run.report
    log.info("retention purge: deleted %s in %d batches%s", report.deleted, report.batches,
             "" if report.complete else "; time ran out, the next run goes on")
    return report
