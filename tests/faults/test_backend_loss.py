"""Backends lost or stopped: sessions move to healthy backends with their cwd and env.

At vterm's default settings: heartbeat every 2 s, TTL 7 s, reconcile every 3 s (beat), so a
backend that stops heartbeating is declared dead about 7-10 s after its last heartbeat.
"""

from __future__ import annotations

import signal

import pytest

from vterm_project.devstack import Proc

from . import scenarios
from .harness import FaultStack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    with FaultStack(redis_url, tmp_path_factory.mktemp("faults-loss"), prefix="fl", at_defaults=True) as st:
        yield st


def test_backend_lost_sessions_move_with_cwd_env_and_queued_commands(fs):
    out = scenarios.backend_lost(fs)
    setup, (running, *rerouted) = out.commands[:4], out.commands[4:]
    assert all(c["status"] == "succeeded" for c in setup)
    assert running["status"] == "interrupted", running
    assert "was lost" in running["reason"] and "no heartbeat" in running["reason"], running["reason"]
    for c in rerouted:
        assert (c["status"], c["output"]) == ("succeeded", "kept, exported later\n/tmp\n"), c
    assert out.lost == 0 and out.recovered == 2


@pytest.mark.parametrize("scenario", [scenarios.worker_returns_late, scenarios.worker_paused],
                         ids=["returns-late", "paused-past-ttl"])
def test_backend_coming_back_after_its_sessions_moved_kills_its_stale_shells(fs, scenario):
    out = scenario(fs)
    running, after = out.commands
    assert running["status"] == "interrupted" and "was lost" in running["reason"], running
    assert after["status"] == "succeeded" and after["output"] == "moved\n"
    assert out.lost == 0 and out.recovered == 1


def test_sigterm_drains_when_asked_to(fs):
    b = fs.backend_ids()[1]
    fs.stack.stop_process(b, signal.SIGTERM)  # a plain stop: detaches, shells stay for adoption
    spec = fs.stack.spec(b)
    before = fs.worker_starts(b)
    fs.stack.start_process(Proc(spec.name, spec.argv, {**spec.env, "VTERM_DRAIN_ON_STOP": "1"}))
    wait_for(lambda: fs.worker_starts(b) > before, 90, "the worker to come up")
    wait_for(lambda: fs.stack.ready(), 60, "both backends healthy")
    sid = fs.session_on(b)["id"]
    fs.api.run(sid, "cd /var")
    fs.api.run(sid, "export STOP_ENV='kept across the stop'")
    fs.stack.stop_process(b, signal.SIGTERM, timeout=60)
    moved = fs.wait_session_active(sid, timeout=60, not_on=b)
    assert moved["cwd"] == "/var", moved
    assert fs.api.run(sid, 'pwd; echo "$STOP_ENV"')["output"] == "/var\nkept across the stop\n"
    assert sid not in fs.tmux_windows(b)
    fs.restart_worker(b)

