"""What a moved session's new shell is started with: the environment read at a drain (or the last one
read, or the creation one) and its past commands as history. Real Redis and the test database; the
message to the new backend is caught."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions import failover
from sessions.models import Backend, Command, TerminalSession

from .test_failover_reconcile import live_redis  # noqa: F401 - a fixture

C = Command.Status


@pytest.fixture
def owner(db):
    return get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(failover, "send_to_backend", lambda queue, task, *args, **kw: calls.append((queue, args)))
    return calls


def _backends():
    now = timezone.now()
    return (Backend.objects.create(id=f"src-{uuid.uuid4().hex[:6]}", hostname="h", queue="q-src", last_heartbeat=now),
            Backend.objects.create(id=f"dst-{uuid.uuid4().hex[:6]}", hostname="h", queue="q-dst", last_heartbeat=now))


def test_a_drain_carries_the_live_environment_and_a_later_loss_the_last_one_read(live_redis, owner, sent):  # noqa: F811
    src, dst = _backends()
    session = TerminalSession.objects.create(owner=owner, backend=src, epoch=1, status="active",
                                             env={"GIVEN": "1", "GONE": "x"})
    live = {"GIVEN": "1", "FOO": 'a b"c', "NL": "l1\nl2"}
    failover.session_migrate(session, reason="backend src is draining", cwd="/tmp", env=live, exclude=(src.pk,))
    session.refresh_from_db()
    assert session.live_env == live and session.live_env_at is not None
    assert session.env == {"GIVEN": "1", "GONE": "x"}, "the API's env stays what the session was created with"
    queue, (sid, epoch, cwd, env, _cols, _rows) = sent[-1]
    assert (queue, sid, cwd, env) == ("q-dst", str(session.pk), "/tmp", live)
    assert "environment as read from its shell at" in session.status_reason

    # The shell comes up: the active reason says which environment it has.
    failover.session_resumed(session_id=str(session.pk), epoch=epoch, backend_id=dst.pk, cwd="/tmp")
    session.refresh_from_db()
    assert session.status == "active" and session.status_reason.startswith(f"moved to backend {dst.pk} (environment as read")

    # The machine is lost later: nothing can be read, the last environment read is used.
    failover.session_migrate(session, reason=f"backend {dst.pk} was lost", exclude=(dst.pk,))
    session.refresh_from_db()
    assert sent[-1][1][3] == live and session.live_env == live
    assert "environment as read from its shell at" in session.status_reason


def test_a_session_never_read_moves_with_its_creation_env_and_says_so(live_redis, owner, sent):  # noqa: F811
    src, _ = _backends()
    session = TerminalSession.objects.create(owner=owner, backend=src, epoch=1, status="active", env={"A": "1"})
    failover.session_migrate(session, reason="lost", exclude=(src.pk,))
    session.refresh_from_db()
    assert sent[-1][1][3] == {"A": "1"} and session.live_env is None
    assert "environment as created: variables exported in its shell were not carried" in session.status_reason


def test_history_is_the_commands_that_ran_oldest_first_and_bounded(owner, monkeypatch):
    session = TerminalSession.objects.create(owner=owner, epoch=1, status="active")
    rows = [("echo 1", C.SUCCEEDED, True), ("false", C.FAILED, True), ("never ran", C.INTERRUPTED, False),
            ("sleep 99", C.INTERRUPTED, True), ("for i in 1 2; do\n  echo $i\ndone", C.SUCCEEDED, True),
            ("queued", C.QUEUED, False)]
    for seq, (text, status, started) in enumerate(rows, 1):
        Command.objects.create(session=session, seq=seq, command=text, status=status,
                               started_at=timezone.now() if started else None)
    assert failover.session_history(session.pk) == ["echo 1", "false", "sleep 99", "for i in 1 2; do\n  echo $i\ndone"]
    monkeypatch.setattr(failover, "HISTORY_CARRIED", 2)
    assert failover.session_history(session.pk) == ["sleep 99", "for i in 1 2; do\n  echo $i\ndone"]
