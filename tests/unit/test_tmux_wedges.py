"""A shell a command or a person left in an odd state: every command still ends, and the next one runs
as typed. TmuxDriver against a real tmux and bash.

What a person types goes to the same readline as the commands: a half-typed line, an incremental
search, a Ctrl-S, a Ctrl-C that bash holds. A command can leave bash wanting more after it started, or
be refused by history expansion, or ignore Ctrl-C with nothing to kill. None of these may leave a
command `running` for ever, or a session's queue stuck behind it.
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest

from tests.driver_recorder import DriverRecorder, shell_env
from workers.tmux import driver as driver_mod
from workers.tmux.driver import NOT_RUN, ShellError, TmuxDriver

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Recorder(DriverRecorder):
    def __init__(self):
        super().__init__()
        self.exited: list[str] = []

    def shell_exited(self, name, reason):
        with self.cond:
            self.exited.append(name)
            self.cond.notify_all()


@pytest.fixture
def driver(tmp_path):
    rec = Recorder()
    d = TmuxDriver(str(tmp_path / "s" / "tmux.sock"), rec, shell_env=shell_env(tmp_path), source_user_bashrc=False)
    d.start()
    d.rec = rec
    d.create_shell("s", cwd=str(tmp_path), env={}, cols=80, rows=24)
    try:
        yield d
    finally:
        d.kill_server()
        d.close()


def _run(d: TmuxDriver, text: str, *, timeout: float | None = 10, wait: float = 15, name: str = "s"):
    cid = f"c{time.monotonic_ns()}"
    d.run(name, cid, text, timeout=timeout)
    return d.rec.wait(cid, wait)


def _at_prompt(d: TmuxDriver) -> None:
    """Wait until the shell reads at its prompt again (what a person typed has been taken)."""
    assert _run(d, "true").status == "succeeded"


def test_a_failed_history_expansion_ends_the_command_as_not_run(driver):
    r = _run(driver, "echo before !nosuchevent-vterm after")
    assert (r.status, r.exit_code, r.reason) == ("failed", 1, NOT_RUN)
    assert r.raw.startswith(b"bash: !nosuchevent") and b"event not found" in r.raw
    r = _run(driver, "echo ok")
    assert (r.status, r.raw) == ("succeeded", b"ok\r\n")


def test_a_half_typed_line_does_not_join_the_command(driver):
    _at_prompt(driver)
    driver.send_text("s", "rm -rf /tmp/vterm-not-this ")  # a person's line, no Enter
    time.sleep(0.2)
    r = _run(driver, "echo ok")
    assert (r.status, r.exit_code, r.raw) == ("succeeded", 0, b"ok\r\n")
    # Kept in readline's kill ring: C-y brings it back to the (now empty) line.
    driver.send_keys("s", ["C-y"])
    deadline = time.monotonic() + 5
    while not any("vterm-not-this" in line for line in driver.screen("s").lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any("vterm-not-this" in line for line in driver.screen("s").lines)


def test_in_vi_mode_too_a_half_typed_line_does_not_join_the_command(driver):
    assert _run(driver, "set -o vi").status == "succeeded"
    for keys in ([], ["Escape"]):  # insert mode, then command mode
        driver.send_text("s", "echo half typed")
        driver.send_keys("s", keys)
        time.sleep(0.2)
        r = _run(driver, "echo ok")
        assert (r.status, r.raw) == ("succeeded", b"ok\r\n"), keys


def test_a_command_waits_while_a_persons_line_wants_more(driver):
    _at_prompt(driver)
    driver.send_text("s", "for i in 1 2; do\r")  # a person's loop, not finished
    time.sleep(0.3)
    driver.run("s", "mine", "echo mine", timeout=10)
    time.sleep(0.5)
    assert "mine" not in driver.rec.started  # not typed into the person's loop
    driver.send_text("s", "echo loop $i; done\r")
    r = driver.rec.wait("mine", 15)
    assert (r.status, r.raw) == ("succeeded", b"mine\r\n")
    assert b"loop 1\r\nloop 2\r\n" in bytes(driver.rec.output["s"])


def test_an_incremental_search_left_open_does_not_take_the_command(driver):
    _at_prompt(driver)
    driver.send_keys("s", ["C-r"])
    driver.send_text("s", "tru")
    time.sleep(0.2)
    r = _run(driver, "echo ok")
    assert (r.status, r.raw) == ("succeeded", b"ok\r\n")


def test_a_ctrl_s_does_not_freeze_the_shell(driver):
    cid = "sleeper"
    driver.run("s", cid, "sleep 0.5; echo after", timeout=10)
    time.sleep(0.1)
    driver.send_keys("s", ["C-s"])  # XOFF while it runs: with the terminal's flow control, all output would wait
    r = driver.rec.wait(cid, 15)
    assert r.status == "succeeded" and r.raw.endswith(b"after\r\n")  # after the ^S's echo
    driver.send_keys("s", ["C-s"])  # at the prompt: readline's forward search, left open
    time.sleep(0.2)
    r = _run(driver, "echo ok")
    assert (r.status, r.raw) == ("succeeded", b"ok\r\n")


def test_a_syntax_error_is_the_commands_output(driver):
    r = _run(driver, "echo (")
    assert (r.status, r.exit_code) == ("failed", 2)
    assert r.raw.startswith(b"bash: syntax error near unexpected token") and r.raw.endswith(b"\r\n")


def test_a_command_found_incomplete_after_it_started_fails_incomplete(driver):
    # The first group is whole and runs; the second leaves bash wanting more, while "running".
    r = _run(driver, "echo one\n}\n{ echo `", timeout=None)
    assert (r.status, r.exit_code, r.reason) == ("failed", 2, "incomplete command")
    r = _run(driver, "echo ok")
    assert (r.status, r.raw) == ("succeeded", b"ok\r\n")


def test_a_stopped_command_the_shell_never_comes_back_from_ends_and_the_queue_waits(driver, monkeypatch):
    monkeypatch.setattr(driver_mod, "ESCALATE_AFTER", 0.3)
    # Ctrl-C ignored and no process to kill: only the shell's own loop runs.
    driver.run("s", "loop", "trap '' INT; while :; do :; done", timeout=0.2)
    r = driver.rec.wait("loop", 15)
    assert r.status == "timed_out" and r.exit_code is None
    assert r.reason.startswith("timed out after 0.2 s; it did not stop: the shell ignored Ctrl-C")
    # The shell is still in its loop: the next command is not typed into it, it waits for the prompt.
    driver.run("s", "next", "echo next", timeout=5)
    time.sleep(1.0)
    assert "next" not in driver.rec.finished and "next" not in driver.rec.started
    # The shell ends (a person closes it): what waited ends with it, it is not lost.
    os.kill(driver.shell_pids()["s"], 9)
    r = driver.rec.wait("next", 15)
    assert r.status == "interrupted"


HUMAN_KEYS = ["C-s", "C-q", "C-z", "C-d", "C-v", "C-c", "C-\\", "Escape", "Enter", "C-x", "C-r", "C-o", "C-j",
              "BSpace", "Tab", "C-g", "C-u", "C-w", "C-y", "Up", "Down", "C-l", "F1", "'", '"', "(", "x"]


def _junk(rng: random.Random, controls: bool) -> str:
    pieces = []
    for _ in range(rng.randrange(1, 12)):
        r = rng.random()
        if controls and r < 0.3:
            pieces.append(chr(rng.randrange(0, 32)))
        elif r < 0.45:
            pieces.append(rng.choice(["'", '"', "`", "$(", "<<", "\\", "{", "(", "\n", "\t", "!", "\x7f", "[201~"]))
        elif r < 0.55:
            pieces.append(chr(rng.randrange(0x80, 0x3000)))
        else:
            pieces.append(chr(rng.randrange(32, 127)))
    return "".join(pieces)


@pytest.mark.parametrize("seed", [1, 25, 28])
def test_whatever_a_person_types_a_command_with_a_timeout_ends(driver, monkeypatch, seed):
    """Random keys and text from a person between commands with short timeouts: each command ends, with
    whatever status, or its shell has exited (a Ctrl-D). Three seeds that once left one running."""
    monkeypatch.setattr(driver_mod, "ESCALATE_AFTER", 0.5)
    rng = random.Random(seed)
    name, shells = "s", 1
    for i in range(60):
        if name in driver.rec.exited:
            shells += 1
            name = f"s{shells}"
            driver.create_shell(name, cwd=os.environ.get("TMPDIR", "/tmp"), env={}, cols=80, rows=24)
        r = rng.random()
        try:
            if r < 0.3:
                driver.send_text(name, _junk(rng, controls=True))
            elif r < 0.5:
                driver.send_keys(name, [rng.choice(HUMAN_KEYS) for _ in range(rng.randrange(1, 4))])
            else:
                text = _junk(rng, controls=False).strip() or "0"
                cid = f"{seed}-{i}"
                driver.run(name, cid, text, timeout=rng.choice([5e-324, 0.01, 0.2]))
                deadline = time.monotonic() + 30
                while True:
                    with driver.rec.cond:
                        ended = driver.rec.cond.wait_for(
                            lambda: cid in driver.rec.finished or name in driver.rec.exited, 3)
                    if ended or time.monotonic() > deadline:
                        break
                    shell = driver._shells.get(name)
                    if shell is not None and (shell.current is None or shell.current.id != cid):
                        # Still queued: a line of the person's holds it, as it would hold them (it wants
                        # more, or their Enter ran `cat`), until their Ctrl-C. Once typed, it must end alone.
                        driver.send_keys(name, ["C-c"])
                assert ended, f"command {i} {text!r} did not end"
        except ShellError:  # only a shell that is gone (a Ctrl-D) refuses
            with driver.rec.cond:
                assert driver.rec.cond.wait_for(lambda: name in driver.rec.exited, 10)


def test_a_shell_whose_pane_has_just_gone_is_a_shell_error(driver):
    """Between a shell's exit and the driver hearing of its closed window, a call about it is the
    ShellError of a shell that is not here (the inbox answers it as such), not tmux's error."""
    driver._get("s").pane_id = "%999999"  # that moment, held still: registered, its pane gone
    for call in (lambda: driver.send_text("s", "x"), lambda: driver.send_keys("s", ["Enter"]),
                 lambda: driver.screen("s")):
        with pytest.raises(ShellError, match="has exited"):
            call()
