"""A backend's shells spread over several tmux servers (workers/tmux/pool.py), on a live stack with
real tmux: at 2 shells per server, 5 sessions take 3 servers and each runs commands; a worker
killed -9 and started again adopts the shells of all of them; one server killed -9 costs only its
own sessions (rebuilt, their running command interrupted) while the others keep their shells and
their running commands.

The heartbeat TTL is long here, so the worker's restart is a restart, not a backend loss.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from .harness import FaultStack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-servers"), prefix="fx", backends=1,
                    VTERM_HEARTBEAT_TTL=60, VTERM_TMUX_WINDOWS_PER_SERVER=2) as st:
        yield st


def _tmux(sock, *args: str) -> str:
    return subprocess.run(["tmux", "-S", str(sock), *args], capture_output=True, text=True, check=True,
                          timeout=10).stdout


def _by_server(fs: FaultStack, b: str) -> dict[str, list[str]]:
    """Session ids per server socket (by file name)."""
    return {sock.name: sorted(w.removeprefix("vt-") for w in _tmux(sock, "list-windows", "-a", "-F",
                                                                    "#{window_name}").split()
                              if w.startswith("vt-"))
            for sock in fs.tmux_sockets(b)}


def _mark(fs: FaultStack, sids: list[str]) -> None:
    """A variable in each shell, not exported: a shell built again (a move) does not have it (in a
    sandbox, $$ is 1 in every shell)."""
    for sid in sids:
        assert fs.api.run(sid, f"__shell_mark=mark-{sid}")["status"] == "succeeded"


def _marked(fs: FaultStack, sid: str) -> bool:
    out = fs.api.run(sid, 'echo "${__shell_mark:-none}"')
    assert out["status"] == "succeeded", out
    return out["output"] == f"mark-{sid}\n"


@pytest.fixture(scope="module")
def sessions(fs):
    return [fs.api.create_session()["id"] for _ in range(5)]


def test_sessions_spread_over_servers_and_each_runs_commands(fs, sessions):
    b = fs.backend_ids()[0]
    servers = _by_server(fs, b)
    assert sorted(servers) == ["tmux-0.sock", "tmux-1.sock", "tmux-2.sock"], servers
    assert sorted(len(v) for v in servers.values()) == [1, 2, 2], servers
    assert sorted(s for v in servers.values() for s in v) == sorted(sessions)
    for i, sid in enumerate(sessions):
        out = fs.api.run(sid, f"echo shell-$((100 + {i}))")
        assert (out["status"], out["output"]) == ("succeeded", f"shell-{100 + i}\n"), out


def test_a_restarted_worker_adopts_the_shells_of_every_server(fs, sessions):
    b = fs.backend_ids()[0]
    _mark(fs, sessions)
    fs.api.run(sessions[4], "cd /tmp")
    servers = _by_server(fs, b)
    starts = fs.worker_starts(b)
    fs.stack.stop_process(b, signal.SIGKILL)
    fs.restart_worker(b)
    log = (fs.stack.log_dir / f"{b}.log").read_text(errors="replace")
    assert log.count("5 shell(s) adopted") >= 1 and fs.worker_starts(b) == starts + 1
    assert _by_server(fs, b) == servers
    assert all(_marked(fs, sid) for sid in sessions)  # the same shells, not new ones
    assert fs.api.run(sessions[4], "pwd")["output"] == "/tmp\n"


def test_one_server_killed_costs_only_its_own_sessions(fs, sessions):
    b = fs.backend_ids()[0]
    servers = _by_server(fs, b)
    victim_sock = next(s for s in fs.tmux_sockets(b) if len(servers[s.name]) == 2)
    victims = servers[victim_sock.name]
    others = [sid for sid in sessions if sid not in victims]
    _mark(fs, sessions)
    # A command running on another server when the server dies goes on and ends as it would.
    spared = fs.submit(others[0], "sleep 3; echo spared")
    lost = fs.submit(victims[0], "sleep 60")
    fs.wait_running(others[0], spared["id"])
    fs.wait_running(victims[0], lost["id"])
    other_pids = {s.name: _tmux(s, "display-message", "-p", "#{pid}").strip()
                  for s in fs.tmux_sockets(b) if s != victim_sock}

    os.kill(int(_tmux(victim_sock, "display-message", "-p", "#{pid}")), signal.SIGKILL)

    spared, lost = fs.settle([spared, lost])
    assert (spared["status"], spared["output"]) == ("succeeded", "spared\n"), spared
    assert lost["status"] == "interrupted" and "tmux server" in lost["reason"], lost
    for sid in victims:
        fs.wait_session_active(sid)
    # Its sessions have new shells; the others the same ones, on the same servers.
    assert {sid: _marked(fs, sid) for sid in sessions} == {sid: sid in others for sid in sessions}
    assert {s: _tmux(fs.tmux_sockets(b)[0].with_name(s), "display-message", "-p", "#{pid}").strip()
            for s in other_pids} == other_pids
    wait_for(lambda: sorted(s for v in _by_server(fs, b).values() for s in v) == sorted(sessions), 30,
             "every session in one of the backend's servers")
    log = (fs.stack.log_dir / f"{b}.log").read_text(errors="replace")
    assert f"tmux server {victim_sock.name} lost (2 shell(s)); starting it again" in log
