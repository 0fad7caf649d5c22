"""A backend worker that cannot get a tmux server, at its start or after losing it, does not stay up.

Half up (heartbeat running, inbox never read or no tmux) a backend looks healthy, takes sessions
and runs none of their commands. Its start is tried again; then the worker exits, so that its
supervisor restarts it and the pool moves its sessions. The failure here is real: the directory
of the backend's tmux socket cannot be made because a file stands in its place.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading

import pytest

from tests.conftest import Api, make_stack
from tests.faults.harness import wait_for
from vterm_project.devstack import ROOT, backend_argv
from workers.tmux.pool import server_sockets

pytestmark = pytest.mark.integration


def _pids_group(st, backend_id: str) -> str:
    """The backend's own cgroup (pids hierarchy), named as workers/sandbox/box.py names it."""
    state_dir = os.path.join(str(st.config.data_dir), "tmux", backend_id, "sandbox")
    digest = hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:8]
    return f"/sys/fs/cgroup/pids/vterm-{backend_id}-{digest}"


def _block_tmux_dir(data_dir, backend_id: str):
    blocker = data_dir / "tmux" / backend_id
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the tmux socket's directory should be")
    return blocker


def test_a_failed_start_is_tried_again_and_the_backend_then_runs_commands(redis_url, tmp_path):
    st = make_stack(redis_url, tmp_path, backends=1, prefix="boot")
    bid = st.config.backend_ids()[0]
    blocker = _block_tmux_dir(st.config.data_dir, bid)
    log = st.log_dir / f"{bid}.log"

    def unblock_after_the_first_failure():
        wait_for(lambda: log.exists() and "backend start failed (attempt 1 of" in log.read_text(errors="replace"),
                 60, "the first start to fail")
        blocker.unlink()

    unblocker = threading.Thread(target=unblock_after_the_first_failure, daemon=True)
    unblocker.start()
    try:
        st.start()
        api = Api(st.url, st.token("boot"))
        sid = api.create_session()["id"]
        # Through the inbox, which a half-started runtime never reads.
        out = api.run(sid, "echo served")
        assert (out["status"], out["output"]) == ("succeeded", "served\n"), out
    finally:
        st.stop()
    unblocker.join(5)
    text = log.read_text(errors="replace")
    assert "FileExistsError" in text, "the first attempt failed for the reason made here"
    assert text.count(f"backend {bid} up:") == 1, text[-3000:]


def test_a_start_that_keeps_failing_ends_the_worker_with_exit_code_1(redis_url, tmp_path):
    st = make_stack(redis_url, tmp_path, backends=1, prefix="bootfail")
    bid = st.config.backend_ids()[0]
    _block_tmux_dir(st.config.data_dir, bid)
    st.config.manage("migrate", "--noinput", "-v0")
    proc = subprocess.run(backend_argv(bid), env={**st.config.env(), "VTERM_BACKEND_ID": bid},
                          capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert out.count("backend start failed (attempt") == 3, out[-3000:]
    assert "backend could not start; the worker exits" in out
    assert f"backend {bid} up:" not in out
    assert not os.path.exists(_pids_group(st, bid))  # its cgroup is not left behind


def test_a_lost_tmux_server_that_cannot_be_started_again_ends_the_worker(redis_url, tmp_path):
    st = make_stack(redis_url, tmp_path, backends=1, prefix="notmux")
    bid = st.config.backend_ids()[0]
    moved = None
    try:
        st.start()
        api = Api(st.url, st.token("notmux"))
        sid = api.create_session()["id"]
        assert api.run(sid, "true")["status"] == "succeeded"
        worker = st.procs[bid]
        # The server goes on from the moved directory until killed; a new one cannot be made.
        tmux_dir = st.config.data_dir / "tmux" / bid
        moved = tmux_dir.rename(tmux_dir.with_name(f"{bid}.moved"))
        _block_tmux_dir(st.config.data_dir, bid)
        for sock in server_sockets(moved):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], check=True)
        worker.wait(timeout=90)
    finally:
        if moved is not None:  # put back, so that the stack's cleanup finds its shells' cgroups
            tmux_dir.unlink(missing_ok=True)
            moved.rename(tmux_dir)
        st.stop()
    assert not os.path.exists(_pids_group(st, bid))  # nor its session's, once the stack is cleaned up
    text = (st.log_dir / f"{bid}.log").read_text(errors="replace")
    assert "tmux restart failed (attempt 20)" in text, text[-3000:]
    assert f"backend {bid}: no tmux server could be started; the worker exits" in text
