"""A backend's writer stores several command ends in one transaction (services.commands_finished):
each is stored and answered as when written alone, a second end of a command changes nothing, and
only a watched session's viewers are sent the event. Real Redis and the test database."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.utils import timezone

from sessions import services
from sessions.models import Backend, Command, TerminalSession
from sessions.redis_state import command_done_key, session_group

from .test_failover_reconcile import live_redis  # noqa: F401 - a fixture


@pytest.fixture
def session(db):
    owner = get_user_model().objects.create(username=f"u-{uuid.uuid4().hex[:6]}")
    backend = Backend.objects.create(id=f"b-{uuid.uuid4().hex[:6]}", hostname="h", last_heartbeat=timezone.now())
    return TerminalSession.objects.create(owner=owner, backend=backend, epoch=1, status="active")


def _command(session, seq: int, submitted_ago: float = 0.0) -> Command:
    cmd = Command.objects.create(session=session, seq=seq, command=f"echo {seq}")
    if submitted_ago:
        Command.objects.filter(pk=cmd.pk).update(submitted_at=timezone.now() - timedelta(seconds=submitted_ago))
        cmd.refresh_from_db()
    return cmd


def _end(cmd: Command, *, known: bool, status: str = "succeeded", exit_code: int = 0) -> dict:
    now = timezone.now()
    return {"command_id": str(cmd.pk), "status": status, "exit_code": exit_code, "output": f"{cmd.seq}\n",
            "output_raw": f"{cmd.seq}\r\n".encode(), "truncated": False, "cwd": "/tmp", "started_at": now,
            "finished_at": now, "duration_ms": 1.5, "reason": "",
            "known": {"session": str(cmd.session_id), "seq": cmd.seq, "command": cmd.command, "timeout": None,
                      "submitted_at": cmd.submitted_at.isoformat()} if known else None}


def test_ends_written_together_are_stored_and_answered_each(live_redis, session):  # noqa: F811
    fresh, unknown, long_one, ended = (_command(session, 1), _command(session, 2), _command(session, 3, 60),
                                       _command(session, 4))
    Command.objects.filter(pk=ended.pk).update(status="interrupted", reason="moved")
    before = TerminalSession.objects.get(pk=session.pk).last_activity

    replies = services.commands_finished([_end(fresh, known=True), _end(unknown, known=False),
                                          _end(long_one, known=True, status="failed", exit_code=3),
                                          _end(ended, known=True)])

    assert [r and (r["seq"], r["status"], r["exit_code"]) for r in replies] == [
        (1, "succeeded", 0), (2, "succeeded", 0), (3, "failed", 3), None]
    for cmd, reply in zip((fresh, unknown, long_one), replies):
        cmd.refresh_from_db()
        assert (cmd.status, cmd.output, cmd.cwd) == (reply["status"], reply["output"], "/tmp")
        assert services.command_json(cmd) == reply, "the answer is the row as stored"
        waiting = live_redis.lpop(command_done_key(str(cmd.pk)))
        assert json.loads(waiting) == reply
    ended.refresh_from_db()
    assert ended.status == "interrupted" and ended.reason == "moved", "the first end stands"
    assert live_redis.llen(command_done_key(str(ended.pk))) == 0
    # Only the command that ran for a minute moved the session's last activity on.
    assert TerminalSession.objects.get(pk=session.pk).last_activity > before


def test_a_watched_sessions_viewers_get_its_command_event_in_a_batch(live_redis, session):  # noqa: F811
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(session_group(str(session.pk)), channel)
    other = TerminalSession.objects.create(owner=session.owner, backend=session.backend, epoch=1, status="active")
    watched, unwatched = _command(session, 1), _command(other, 1)

    services.commands_finished([_end(unwatched, known=True), _end(watched, known=True)])

    event = async_to_sync(layer.receive)(channel)
    assert event["type"] == "command.event" and event["command"]["id"] == str(watched.pk)
    assert not live_redis.exists(layer._group_key(session_group(str(other.pk)))), "nobody watches the other"
