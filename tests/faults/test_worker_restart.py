"""A backend worker restarts (kill -9) with its tmux server alive: it adopts its shells.

Heartbeat TTL is long here, so the restart is a restart, not a backend loss.
"""

from __future__ import annotations

import pytest

from . import scenarios
from .harness import FaultStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    st = FaultStack(redis_url, tmp_path_factory.mktemp("faults-restart"), prefix="fr", VTERM_HEARTBEAT_TTL=60)
    try:
        yield st.start()
    finally:
        st.stop()


def test_worker_kill9_mid_command_adopts_and_runs_what_was_queued(fs):
    out = scenarios.worker_crash(fs)
    first, after, pwd = out.commands
    # The command that was running when the worker died went on in tmux and is adopted:
    # its end, exit code and output after the adoption are captured.
    assert (first["status"], first["exit_code"]) == ("succeeded", 0), first
    assert first["output"].endswith("released\n")
    # Commands accepted while the worker was down ran afterwards, in order, in the same shell.
    assert (after["status"], after["output"]) == ("succeeded", "after-1\n"), after
    assert (pwd["status"], pwd["output"]) == ("succeeded", "/tmp\n"), pwd
    assert after["started_at"] >= first["finished_at"] and pwd["started_at"] >= after["finished_at"]
    assert out.lost == 0 and out.recovered == 1


def test_tmux_server_killed_rebuilds_the_shell_with_cwd_and_env(fs):
    out = scenarios.tmux_killed(fs)
    cd, running, queued = out.commands
    assert running["status"] == "interrupted" and "tmux server" in running["reason"], running
    assert (queued["status"], queued["output"]) == ("succeeded", "kept\n/tmp\n"), queued
    assert out.lost == 0 and out.recovered == 1
