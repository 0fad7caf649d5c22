"""A command whose hand-off to its backend was lost still reaches a final state (docs/failover.md,
"What a 201 means"). The loss is made exactly as a Redis failover makes it: the command's row is
recorded as the API records it (sessions/services.py), and its RPUSH onto the backend's inbox
never happens. The backends' hand-off check (workers/handoff_check.py, at its default interval
and grace) must find it: run it when nothing overtook it, else end it ``interrupted``.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import shell_home

pytestmark = pytest.mark.integration

FINAL = {"succeeded", "failed", "timed_out", "interrupted"}


def _record_without_handoff(stack, session_id: str, command: str) -> str:
    """The command's row as command_create writes it, minus the hand-off (lost with the primary)."""
    code = (
        "from django.db import transaction\n"
        "from sessions import services\n"
        "from sessions.models import Command\n"
        "with transaction.atomic():\n"
        f"    seq, *_ = services._session_next_seq({session_id!r}, None)\n"
        f"    cmd = Command.objects.create(session_id={session_id!r}, seq=seq, command={command!r})\n"
        "print(cmd.pk)\n")
    return stack.config.manage("shell", "-c", code).stdout.strip().splitlines()[-1]


def _wait_final(alice, sid: str, cid: str, timeout: float = 90) -> dict:
    end = time.monotonic() + timeout
    while True:
        c = alice.http.get(f"/api/v1/sessions/{sid}/commands/{cid}/").json()
        if c["status"] in FINAL or time.monotonic() > end:
            return c
        time.sleep(0.2)


def test_a_lost_handoff_is_run_from_the_database(stack, alice):
    sid = alice.create_session()["id"]
    host_home, home = shell_home(alice, sid, stack.config.data_dir)  # where the shell can write
    assert alice.run(sid, "cd /tmp")["status"] == "succeeded"
    name = f"lost-{uuid.uuid4().hex}"
    marker = host_home / name
    cid = _record_without_handoff(stack, sid, f"touch {home}/{name}; echo ran-late")
    c = _wait_final(alice, sid, cid)
    assert c["status"] == "succeeded", c
    assert c["output"] == "ran-late\n" and c["cwd"] == "/tmp", c
    assert marker.exists()
    # The session goes on in order; the late one ran once.
    after = alice.run(sid, "echo next")
    assert after["status"] == "succeeded" and after["seq"] == c["seq"] + 1


def test_a_lost_handoff_overtaken_by_a_later_command_is_interrupted_not_run(stack, alice):
    sid = alice.create_session()["id"]
    host_home, home = shell_home(alice, sid, stack.config.data_dir)
    name = f"overtaken-{uuid.uuid4().hex}"
    marker = host_home / name
    cid = _record_without_handoff(stack, sid, f"touch {home}/{name}")
    later = alice.run(sid, "echo later")
    assert later["status"] == "succeeded"
    c = _wait_final(alice, sid, cid)
    assert c["status"] == "interrupted", c
    assert "hand-off" in c["reason"] and "later command" in c["reason"], c
    assert not marker.exists(), "a command overtaken by a later one must not run out of order"
    events = alice.http.get(f"/api/v1/sessions/{sid}/commands/").json()
    statuses = {x["id"]: x["status"] for x in events.get("results", events)}
    assert statuses[cid] == "interrupted" and statuses[later["id"]] == "succeeded", json.dumps(statuses)
