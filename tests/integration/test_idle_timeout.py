"""Idle timeouts, and the output a stopped command keeps, against the live stack.

A stopped command's output is what it printed until then, without what the terminal showed of
the stop (the Ctrl-C's echo ^C, the shell's newline, its "Killed"): those stay in the raw bytes.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.integration


def _kept(output: str, printed: str) -> None:
    """``output`` is what the command printed, and nothing of its stop."""
    assert output == printed, output


def _start(alice, sid: str, command: str, shown: str) -> dict:
    """Submit ``command`` and return once the terminal shows ``shown`` (what it printed first)."""
    cmd = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": command}).json()
    deadline = time.monotonic() + 20
    while shown not in "\n".join(alice.http.get(f"/api/v1/sessions/{sid}/screen/").json()["lines"][1:]):
        assert time.monotonic() < deadline, "the command never printed"
        time.sleep(0.05)
    return cmd


def test_a_silent_command_ends_timed_out_with_what_it_printed(alice, session):
    sid = session["id"]
    r = alice.run(sid, "echo start; sleep 5", idle_timeout=1, wait=20)
    assert r["status"] == "timed_out", r
    assert r["reason"] == "no output for 1 s"
    _kept(r["output"], "start\n")
    assert r["idle_timeout"] == 1 and r["timeout"] is None
    # The session carries on.
    after = alice.run(sid, "echo after")
    assert (after["status"], after["output"], after["idle_timeout"]) == ("succeeded", "after\n", None)


def test_a_command_that_keeps_printing_is_not_stopped(alice, session):
    r = alice.run(session["id"], "for i in 1 2 3 4 5 6 7; do echo tick $i; sleep 0.3; done", idle_timeout=1, wait=30)
    assert r["status"] == "succeeded", r
    assert r["output"] == "".join(f"tick {i}\n" for i in range(1, 8))


def test_a_silent_command_that_ignores_ctrl_c_is_killed(alice, session):
    sid = session["id"]
    r = alice.run(sid, "(trap '' INT; echo stubborn; sleep 30)", idle_timeout=0.5, wait=30)
    assert r["status"] == "timed_out", r
    assert r["reason"] == "no output for 0.5 s"
    _kept(r["output"], "stubborn\n")
    assert alice.run(sid, "echo after")["output"] == "after\n"


def test_the_wall_clock_timeout_keeps_the_output(alice, session):
    sid = session["id"]
    r = alice.run(sid, "echo before; sleep 30", timeout=1, wait=20)
    assert r["status"] == "timed_out" and r["reason"] == "timed out after 1 s"
    _kept(r["output"], "before\n")
    # Both: the wall clock passes first while the command keeps printing.
    r = alice.run(sid, "while :; do echo x; sleep 0.2; done", timeout=1.5, idle_timeout=5, wait=20)
    assert r["status"] == "timed_out" and r["reason"] == "timed out after 1.5 s"
    assert r["output"].startswith("x\n")


def test_an_interrupt_keeps_the_output(alice, session):
    sid = session["id"]
    cmd = _start(alice, sid, "echo interrupted-here; sleep 30", "interrupted-here")
    assert alice.http.post(f"/api/v1/sessions/{sid}/commands/{cmd['id']}/interrupt/").status_code == 202
    r = alice.wait_command(sid, cmd["id"])
    assert r["status"] == "interrupted"
    _kept(r["output"], "interrupted-here\n")


def test_ctrl_c_typed_keeps_the_output(alice, session):
    sid = session["id"]
    cmd = _start(alice, sid, "echo typed-ctrl-c; sleep 30", "typed-ctrl-c")
    assert alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["C-c"]}).status_code == 202
    r = alice.wait_command(sid, cmd["id"])
    assert (r["status"], r["exit_code"]) == ("failed", 130)
    # Typed by a person, not a stop of vterm's: its echo is the terminal's, and stays.
    assert re.fullmatch(r"typed-ctrl-c\n(\^C)?\n?", r["output"]), r["output"]
    assert alice.run(sid, "echo after")["output"] == "after\n"
