"""What a backend is given to run a stored command (a moved session's queue, a rebuilt shell's, a
lost hand-off): the same keys as the inbox message, the idle timeout with the wall-clock one."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model

from sessions.models import Command, TerminalSession
from sessions.services import command_run_spec, commands_queued


@pytest.mark.django_db
def test_queued_commands_carry_both_timeouts_in_order():
    owner = get_user_model().objects.create(username=f"spec-{uuid.uuid4().hex[:6]}")
    session = TerminalSession.objects.create(owner=owner)
    a = Command.objects.create(session=session, seq=1, command="sleep 9", timeout=5, idle_timeout=1.5)
    b = Command.objects.create(session=session, seq=2, command="echo b")
    Command.objects.create(session=session, seq=3, command="done", status=Command.Status.SUCCEEDED)
    assert commands_queued(session.pk) == [
        {"id": str(a.pk), "command": "sleep 9", "timeout": 5, "idle_timeout": 1.5},
        {"id": str(b.pk), "command": "echo b", "timeout": None, "idle_timeout": None},
    ]
    # From a loaded row as from a .values() one (failover._settle_commands).
    assert command_run_spec(vars(Command.objects.get(pk=a.pk))) == commands_queued(session.pk)[0]
