"""A worker that restarts finds its shells as it left them (TmuxDriver.start adopting a live tmux server):
their nonce, epoch and last command, kept in the hidden environment of a session of their own (not in
window options, whose every change costs tmux a pass over all windows), or in the window options a
driver before that kept them in; and the shells' pids without asking tmux.

Against a real tmux and bash.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.driver_recorder import DriverRecorder, shell_env
from workers.tmux.driver import KEEP_SESSION, TmuxDriver

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def make(tmp_path):
    sock = str(tmp_path / "s" / "tmux.sock")
    env = shell_env(tmp_path)
    made = []

    def _make() -> TmuxDriver:
        d = TmuxDriver(sock, DriverRecorder(), shell_env=env, source_user_bashrc=False)
        d.rec = d.listener
        made.append(d)
        return d

    yield _make
    made[-1].kill_server()
    for d in made:
        d.close()


def _tmux(d: TmuxDriver, *args: str) -> str:
    return subprocess.run(d._tmux_argv(*args), env=d._server_env(), capture_output=True, text=True,
                          check=True, timeout=10).stdout


def _run(d: TmuxDriver, name: str, cid: str, text: str):
    d.run(name, cid, text, timeout=10)
    return d.rec.wait(cid)


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def test_a_restarted_driver_adopts_nonce_epoch_last_command_and_pid(make, tmp_path):
    first = make()
    assert first.start() == []
    # s1 has the control client's size (the API's default): no size of its own in tmux.
    first.create_shell("s1", cwd=str(tmp_path), env={}, cols=120, rows=40, epoch=3)
    first.create_shell("s2", cwd=str(tmp_path), env={}, cols=100, rows=30, epoch=4)
    assert _run(first, "s1", "size1", "stty size").raw.strip() == b"40 120"
    assert _run(first, "s2", "size2", "stty size").raw.strip() == b"30 100"
    assert _run(first, "s1", "c1", "true").status == "succeeded"
    # What is kept for tmux's sake is hidden from the shells.
    seen = _run(first, "s2", "look", "env | grep -c __vterm_")
    assert seen.raw.strip() == b"0", seen.raw
    pids = first.shell_pids()
    assert set(pids) == {"s1", "s2"} and all(_comm(p) == "bash" for p in pids.values())
    first.close()

    second = make()
    adopted = {i.name: i for i in second.start()}
    assert set(adopted) == {"s1", "s2"}
    assert (adopted["s1"].epoch, adopted["s1"].last_command) == (3, "c1")
    assert (adopted["s2"].epoch, adopted["s2"].last_command) == (4, "look")
    assert (adopted["s1"].cols, adopted["s1"].rows) == (120, 40)
    assert (adopted["s2"].cols, adopted["s2"].rows) == (100, 30)
    assert _run(second, "s2", "size3", "stty size").raw.strip() == b"30 100"
    second.create_shell("s3", cwd=str(tmp_path), env={}, cols=120, rows=40)
    assert _run(second, "s3", "size4", "stty size").raw.strip() == b"40 120"
    second.resize("s3", 90, 20)
    assert _run(second, "s3", "size5", "stty size").raw.strip() == b"20 90"
    second.resize("s3", 120, 40)  # back to the client's size: its own size follows
    assert _run(second, "s3", "size6", "stty size").raw.strip() == b"40 120"
    assert _run(second, "s1", "size7", "stty size").raw.strip() == b"40 120"
    assert _run(second, "s2", "size8", "stty size").raw.strip() == b"30 100"
    assert {k: v for k, v in second.shell_pids().items() if k != "s3"} == pids
    # The nonce came back: the adopted shell's marks are read, its commands end.
    done = _run(second, "s1", "c2", "echo hi; false")
    assert (done.status, done.exit_code) == ("failed", 1) and b"hi" in done.raw

    # A shell that ends leaves nothing kept behind.
    window = adopted["s2"].window_id.lstrip("@")
    assert f"__vterm_nonce_{window}=" in _tmux(second, "show-environment", "-h", "-t", KEEP_SESSION)
    second.kill_shell("s2")
    assert _run(second, "s1", "c3", "true").status == "succeeded"  # the unsets went before it
    assert f"_{window}=" not in _tmux(second, "show-environment", "-h", "-t", KEEP_SESSION)
    assert set(second.shell_pids()) == {"s1", "s3"}


def test_shells_kept_in_window_options_by_an_older_driver_are_adopted(make, tmp_path):
    first = make()
    first.start()
    info = first.create_shell("old", cwd=str(tmp_path), env={}, cols=80, rows=24, epoch=7)
    first.close()
    # As a driver before the hidden environment left it: window options only.
    window = info.window_id
    kept = dict(line.split("=", 1) for line in _tmux(first, "show-environment", "-h", "-t", KEEP_SESSION).split())
    number = window.lstrip("@")
    for key, value in (("nonce", kept[f"__vterm_nonce_{number}"]), ("epoch", "7"), ("cmd", "c-old")):
        _tmux(first, "set-environment", "-u", "-t", KEEP_SESSION, f"__vterm_{key}_{number}")
        _tmux(first, "set-option", "-w", "-t", window, f"@vterm_{key}", value)

    second = make()
    adopted = {i.name: i for i in second.start()}
    assert (adopted["old"].epoch, adopted["old"].last_command) == (7, "c-old")
    assert _run(second, "old", "c1", "true").status == "succeeded"
    # What it types from now on is kept the new way, and wins over the old option.
    second.close()
    third = make()
    assert {i.name: i.last_command for i in third.start()} == {"old": "c1"}
