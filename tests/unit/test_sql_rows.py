"""sessions/sql_rows.row_insert writes the row the ORM's create() would, against the test database:
defaults, auto_now_add, a given or a database-made primary key, a foreign key, JSON."""

from __future__ import annotations

import uuid

from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions.models import AuditEvent, Backend, Command, TerminalSession
from sessions.sql_rows import row_insert


def _stored(model, pk, *skip: str) -> dict:
    row = model.objects.filter(pk=pk).values().get()
    return {k: v for k, v in row.items() if k not in skip}


def test_a_command_row_is_the_one_create_makes(db):
    owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    backend = Backend.objects.create(id=f"b-{uuid.uuid4().hex[:6]}", hostname="h", last_heartbeat=timezone.now())
    session = TerminalSession.objects.create(owner=owner, backend=backend, epoch=1, status="active")
    before = timezone.now()

    made = row_insert(Command, session_id=session.pk, seq=1, command="true", timeout=2.5, idle_timeout=None,
                      notify_url="")
    chosen = uuid.uuid4()
    given = row_insert(Command, id=chosen, session_id=session.pk, seq=2, command="echo hi", timeout=None,
                       idle_timeout=1.0, notify_url="http://127.0.0.1:9/hook")
    orm = Command.objects.create(session_id=session.pk, seq=3, command="true", timeout=2.5, idle_timeout=None,
                                 notify_url="")

    assert given.pk == chosen and isinstance(made.pk, uuid.UUID) and made.pk != chosen
    skip = ("id", "seq", "submitted_at")
    assert _stored(Command, made.pk, *skip) == _stored(Command, orm.pk, *skip)
    stored = Command.objects.get(pk=given.pk)
    assert (stored.command, stored.idle_timeout, stored.notify_url, stored.status, stored.output_raw) == (
        "echo hi", 1.0, "http://127.0.0.1:9/hook", "queued", b"")
    assert before <= stored.submitted_at <= timezone.now()
    # The instance returned is the row as stored (the answer is rendered from it).
    for obj in (made, given):
        assert _stored(Command, obj.pk) == {f.attname: getattr(obj, f.attname) for f in Command._meta.concrete_fields}
        assert not obj._state.adding


def test_an_audit_row_takes_its_id_from_the_database(db):
    user = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    sid = uuid.uuid4()

    first = row_insert(AuditEvent, user=user, username=user.username, action="command.run", session_id=sid,
                       remote_addr="127.0.0.1", detail={"command": "true", "n": [1, 2]})
    second = row_insert(AuditEvent, user=None, username="", action="auth.login_throttled", session_id=None,
                        remote_addr="", detail={})

    assert isinstance(first.pk, int) and second.pk > first.pk
    stored = AuditEvent.objects.get(pk=first.pk)
    assert (stored.user_id, stored.action, stored.session_id, stored.detail) == (
        user.pk, "command.run", sid, {"command": "true", "n": [1, 2]})
    assert stored.at == first.at
    assert AuditEvent.objects.get(pk=second.pk).user_id is None
