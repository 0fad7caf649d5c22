"""The audit trail: who did what to which session, from where, when (AuditEvent rows).

Services (sessions/services.py) and, for what has no service of its own yet, views and consumers call
``audit_record`` after authorizing, in the database step they take anyway, so that every entry point
(REST, WebSocket, the pages, the admin) writes the same rows. What a user types as keystrokes is not kept
(it may be a password typed at a prompt): only its size, or the key names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime

from .models import AuditEvent
from .sql_rows import row_insert

SESSION_CREATE = "session.create"
SESSION_ATTACH = "session.attach"  # a WebSocket viewer connected
SESSION_INPUT = "session.input"
SESSION_RESIZE = "session.resize"
SESSION_TERMINATE = "session.terminate"
SESSION_RECORDING = "session.recording"  # its recording was downloaded
COMMAND_RUN = "command.run"
COMMAND_INTERRUPT = "command.interrupt"
JOB_START = "job.start"
JOB_KILL = "job.kill"
LOGIN_THROTTLED = "auth.login_throttled"
WEBHOOK_SECRET_ROTATE = "webhook.secret_rotate"

COMMAND_TEXT_KEPT = 4096  # characters of a command's text kept in its audit row


def request_addr(request) -> str:
    """The client's address as the web server saw it (Daphne: the peer, or X-Forwarded-For
    when it runs with --proxy-headers behind a trusted proxy)."""
    if request is None:
        return ""
    return str(request.META.get("REMOTE_ADDR") or "")[:100]


def audit_record(user, action: str, session_id=None, *, request=None, remote_addr: str = "",
                 detail: dict | None = None) -> AuditEvent:
    """Write one audit row. ``user`` may be None (e.g. a throttled anonymous login)."""
    if user is not None and not getattr(user, "is_authenticated", False):
        user = None
    return row_insert(  # the ORM's create, compiled once: one of these per command (sessions/sql_rows.py)
        AuditEvent,
        user=user,
        username=(user.get_username() if user is not None else (detail or {}).get("username", ""))[:150],
        action=action[:40],
        session_id=session_id,
        remote_addr=(remote_addr or request_addr(request))[:100],
        detail=detail or {},
    )


def audit_command_detail(command_id, text: str) -> dict:
    detail = {"command_id": str(command_id), "command": text[:COMMAND_TEXT_KEPT]}
    if len(text) > COMMAND_TEXT_KEPT:
        detail["command_truncated"] = True
    return detail


def audit_input_detail(data: str | None, keys: list[str] | None) -> dict:
    if keys is not None:
        return {"keys": keys[:64], "key_count": len(keys)}
    return {"chars": len(data or "")}


def audit_event_json(ev: AuditEvent) -> dict:
    return {
        "id": ev.pk,
        "at": ev.at.isoformat(),
        "user": ev.username,
        "action": ev.action,
        "session": str(ev.session_id) if ev.session_id else None,
        "remote_addr": ev.remote_addr,
        "detail": ev.detail,
    }


def audit_events(*, since: datetime | None = None, until: datetime | None = None, user: str | None = None,
                 action: str | None = None, session_id=None):
    """Audit rows, oldest first, narrowed by any of the filters."""
    qs = AuditEvent.objects.order_by("at", "id")
    if since is not None:
        qs = qs.filter(at__gte=since)
    if until is not None:
        qs = qs.filter(at__lt=until)
    if user:
        qs = qs.filter(username=user)
    if action:
        qs = qs.filter(action=action)
    if session_id:
        qs = qs.filter(session_id=session_id)
    return qs


def audit_export_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    """JSON lines, one event per line (each line ends with a newline)."""
    for ev in events:
        yield json.dumps(audit_event_json(ev), ensure_ascii=False, sort_keys=True) + "\n"
