"""A backend's shells over several tmux servers (workers/tmux/pool.py): where a new shell goes and
how servers' sockets are named (pure), then the pool against real tmux and bash: shells spread,
commands run in each, a restarted worker adopts every server's shells, one server killed hard
costs only its own shells and is started again alone, and one ticker serves them all."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pytest

from tests.driver_recorder import DriverRecorder, shell_env
from workers.tmux.control import ControlClosed
from workers.tmux.driver import ShellError
from workers.tmux.pool import (
    TmuxPool,
    all_server_sockets,
    choose_server,
    next_socket_name,
    server_sockets,
)

# -- placement (pure) -----------------------------------------------------------


def test_a_new_shell_goes_to_the_least_filled_server_with_room():
    assert choose_server([3, 1, 2], 4) == 1
    assert choose_server([4, 4, 2], 4) == 2
    assert choose_server([2, 2], 4) == 0  # the first of equals


def test_no_server_with_room_says_so():
    assert choose_server([4, 4], 4) is None
    assert choose_server([], 4) is None


def test_zero_per_server_is_one_server_without_limit():
    assert choose_server([10_000], 0) == 0
    assert choose_server([5, 3], 0) == 1  # servers a worker adopted still fill evenly


def test_a_new_server_takes_the_lowest_free_number():
    assert next_socket_name([]) == "tmux-0.sock"
    assert next_socket_name(["tmux-0.sock", "tmux-1.sock"]) == "tmux-2.sock"
    assert next_socket_name(["tmux-1.sock"]) == "tmux-0.sock"
    assert next_socket_name(["tmux.sock", "tmux-0.sock"]) == "tmux-1.sock"  # an old worker's socket


def test_server_sockets_are_found_old_name_first_then_by_number(tmp_path):
    for name in ("tmux-10.sock", "tmux-2.sock", "tmux.sock", "tmux.conf", "tmux-x.sock", "other.sock"):
        (tmp_path / "b1" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "b1" / name).write_text("")
    assert [p.name for p in server_sockets(tmp_path / "b1")] == ["tmux.sock", "tmux-2.sock", "tmux-10.sock"]


def test_every_backends_sockets_are_found_for_cleanup(tmp_path):
    for b, name in (("b1", "tmux.sock"), ("b1", "tmux-0.sock"), ("b2", "tmux-3.sock")):
        (tmp_path / "tmux" / b).mkdir(parents=True, exist_ok=True)
        (tmp_path / "tmux" / b / name).write_text("")
    assert [str(p.relative_to(tmp_path)) for p in all_server_sockets(tmp_path)] == [
        "tmux/b1/tmux.sock", "tmux/b1/tmux-0.sock", "tmux/b2/tmux-3.sock"]


# -- against real tmux -------------------------------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Recorder(DriverRecorder):
    def __init__(self) -> None:
        super().__init__()
        self.exited: dict[str, str] = {}
        self.lost = threading.Event()

    def shell_exited(self, name, reason):
        self.exited[name] = reason

    def server_lost(self):
        self.lost.set()


@pytest.fixture
def make(tmp_path):
    # A short path: a unix socket's path is limited to 107 bytes.
    d = str(tmp_path / "t")
    env = shell_env(tmp_path)
    made = []

    def _make(per_server: int = 2) -> TmuxPool:
        p = TmuxPool(d, Recorder(), shell_env=env, per_server=per_server, source_user_bashrc=False)
        made.append(p)
        return p

    yield _make
    made[-1].kill_server()
    for p in made:
        p.close()


def _run(p: TmuxPool, name: str, cid: str, text: str):
    p.run(name, cid, text, timeout=10)
    return p.listener.wait(cid)


def _new(p: TmuxPool, name: str, tmp_path) -> None:
    p.create_shell(name, cwd=str(tmp_path), env={}, cols=120, rows=40, epoch=1)


def _wait_for(predicate, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "waited too long"
        time.sleep(0.02)


def _servers(p: TmuxPool) -> dict[str, list[str]]:
    return {os.path.basename(d.socket_path): sorted(d.shell_names()) for d in p.drivers}


@needs_tmux
def test_shells_spread_over_servers_and_each_runs_commands(make, tmp_path):
    p = make(per_server=2)
    assert p.start() == []
    for i in range(5):
        _new(p, f"s{i}", tmp_path)
    assert _servers(p) == {"tmux-0.sock": ["s0", "s1"], "tmux-1.sock": ["s2", "s3"], "tmux-2.sock": ["s4"]}
    assert sorted(p.shell_names()) == [f"s{i}" for i in range(5)]
    for i in range(5):
        r = _run(p, f"s{i}", f"c{i}", f"echo hi-$((40 + {i}))")
        assert r.status == "succeeded" and f"hi-{40 + i}".encode() in r.raw
    # Each server's pid is its own; each shell's pid is known.
    assert len(set(p.server_pids())) == 3
    assert sorted(p.shell_pids()) == [f"s{i}" for i in range(5)]
    with pytest.raises(ShellError):
        _new(p, "s3", tmp_path)  # on another server than the least filled: still one of each name
    # A place freed is taken again before a new server is started.
    p.kill_shell("s1")
    _new(p, "s5", tmp_path)
    assert _servers(p)["tmux-0.sock"] == ["s0", "s5"]
    # The calls about one shell reach its server: screen, cwd, keys, the environment of several.
    _run(p, "s4", "c-export", "export POOLED=yes")
    assert p.capture_env(["s0", "s4", "gone"]) == {
        "s0": p.capture_env(["s0"])["s0"], "s4": p.capture_env(["s4"])["s4"], "gone": None}
    assert p.capture_env(["s4"])["s4"]["POOLED"] == "yes"
    assert p.current_cwd("s2") == str(tmp_path)
    with pytest.raises(ShellError):
        p.run("gone", "c-x", "true")
    # One ticker for all servers: a timeout on the third server still fires.
    assert [t.name for t in threading.enumerate()].count("tmux-ticker") == 1
    p.run("s4", "c-slow", "sleep 30", timeout=0.5)
    assert p.listener.wait("c-slow").status == "timed_out"


@needs_tmux
def test_a_restarted_worker_adopts_the_shells_of_every_server(make, tmp_path):
    first = make(per_server=2)
    first.start()
    for i in range(3):
        _new(first, f"s{i}", tmp_path)
    _run(first, "s2", "c1", "cd /tmp")
    first.close()

    second = make(per_server=2)
    adopted = second.start()
    assert sorted(i.name for i in adopted) == ["s0", "s1", "s2"]
    assert _servers(second) == {"tmux-0.sock": ["s0", "s1"], "tmux-1.sock": ["s2"]}
    assert {i.name: i.cwd for i in adopted}["s2"] == "/tmp"
    r = _run(second, "s2", "c2", "pwd")
    assert r.status == "succeeded" and b"/tmp" in r.raw
    # The next shell fills the server with room, not a new one.
    _new(second, "s3", tmp_path)
    assert _servers(second)["tmux-1.sock"] == ["s2", "s3"]


@needs_tmux
def test_the_old_single_socket_is_adopted_with_its_shells(make, tmp_path):
    from workers.tmux.driver import TmuxDriver
    d = str(tmp_path / "t")
    env = shell_env(tmp_path)
    old = TmuxDriver(os.path.join(d, "tmux.sock"), Recorder(), shell_env=env, source_user_bashrc=False)
    old.start()
    old.create_shell("before", cwd=str(tmp_path), env={}, cols=120, rows=40, epoch=2)
    old.close()

    p = make(per_server=2)
    assert [i.name for i in p.start()] == ["before"]
    assert _servers(p) == {"tmux.sock": ["before"]}
    assert _run(p, "before", "c1", "true").status == "succeeded"
    _new(p, "a", tmp_path)
    _new(p, "b", tmp_path)
    assert _servers(p) == {"tmux.sock": ["a", "before"], "tmux-0.sock": ["b"]}


@needs_tmux
def test_a_server_killed_hard_is_started_again_alone(make, tmp_path):
    p = make(per_server=2)
    p.start()
    for i in range(4):
        _new(p, f"s{i}", tmp_path)
    victim = next(d for d in p.drivers if os.path.basename(d.socket_path) == "tmux-1.sock")
    other_pid = next(d for d in p.drivers if d is not victim).server_pid
    os.kill(victim.server_pid, signal.SIGKILL)
    assert p.listener.lost.wait(10)
    _wait_for(lambda: not p.alive)  # told at tmux's %exit, closed at the end of its output
    with pytest.raises(ControlClosed):  # its shells cannot be reached until it is started again
        p.send_text("s2", "x")
    lost = p.restart_lost()
    assert sorted(lost) == ["s2", "s3"]
    assert p.alive
    # The other server and its shells were not touched.
    assert next(d for d in p.drivers if d.socket_path.endswith("tmux-0.sock")).server_pid == other_pid
    assert sorted(p.shell_names()) == ["s0", "s1"]
    assert _run(p, "s0", "c0", "echo still").status == "succeeded"
    # The restarted server (same socket, new process) takes new shells.
    _new(p, "s2", tmp_path)
    _new(p, "s4", tmp_path)
    assert _servers(p) == {"tmux-0.sock": ["s0", "s1"], "tmux-1.sock": ["s2", "s4"]}
    assert _run(p, "s4", "c4", "echo back").status == "succeeded"


@needs_tmux
def test_a_dead_socket_left_behind_is_not_adopted(make, tmp_path):
    p = make(per_server=2)
    p.start()
    for i in range(3):
        _new(p, f"s{i}", tmp_path)
    pid = next(d for d in p.drivers if d.socket_path.endswith("tmux-1.sock")).server_pid
    p.close()
    os.kill(pid, signal.SIGKILL)  # with the worker down: its socket file stays
    _wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert os.path.exists(tmp_path / "t" / "tmux-1.sock")

    again = make(per_server=2)
    assert sorted(i.name for i in again.start()) == ["s0", "s1"]
    assert _servers(again) == {"tmux-0.sock": ["s0", "s1"]}
    assert not os.path.exists(tmp_path / "t" / "tmux-1.sock")


@needs_tmux
def test_shells_started_at_once_fill_servers_evenly(make, tmp_path):
    p = make(per_server=2)
    p.start()
    errors = []

    def new(i: int) -> None:
        try:
            _new(p, f"s{i}", tmp_path)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=new, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(len(v) for v in _servers(p).values()) == [2, 2, 2]
