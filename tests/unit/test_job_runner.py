"""The job runner (workers/jobs.py) on its own, without a sandbox (VTERM_SANDBOX=off): real
processes, a listener that collects what it is told. The sandboxed path is tested against the
live stack (tests/integration/test_jobs.py)."""

from __future__ import annotations

import os
import random
import threading
import time

import psutil
import pytest

from sessions.jobs import _utf8_complete
from workers.jobs import JobEnd, JobRunner
from workers.sandbox import NoSandbox


class Collect:
    def __init__(self) -> None:
        self.text: dict[str, str] = {}
        self.ends: dict[str, JobEnd] = {}
        self.ended = threading.Condition()

    def job_output(self, job_id: str, text: str) -> None:
        self.text[job_id] = self.text.get(job_id, "") + text

    def job_ended(self, end: JobEnd) -> None:
        with self.ended:
            self.ends[end.job_id] = end
            self.ended.notify_all()

    def wait(self, job_id: str, timeout: float = 20) -> JobEnd:
        with self.ended:
            assert self.ended.wait_for(lambda: job_id in self.ends, timeout), f"job {job_id} did not end"
            return self.ends[job_id]


@pytest.fixture
def runner(tmp_path):
    got = Collect()
    sandbox = NoSandbox(str(tmp_path), str(tmp_path / "rc"))
    r = JobRunner(got, sandbox=sandbox, output_limit=1000)
    r.got, r.box = got, sandbox.find("s1")
    yield r
    r.close()


def run(runner, job_id: str, command: str, *, cwd: str = "/tmp", env: dict | None = None, timeout=None):
    return runner.start(job_id, "s1", command, box=runner.box, shell_pid=None, cwd=cwd,
                        env=env or {"PATH": os.environ["PATH"]}, timeout=timeout)


def sleeping(n: int) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", str(n)]]


def test_output_cwd_env_exit_code_and_pid(runner, tmp_path):
    pid = run(runner, "j1", 'echo "$GREETING from $(pwd)"; echo err >&2; exit 3', cwd=str(tmp_path),
              env={"PATH": os.environ["PATH"], "GREETING": "hi"})
    end = runner.got.wait("j1")
    assert isinstance(pid, int) and pid > 0
    assert (end.status, end.exit_code, end.truncated) == ("failed", 3, False)
    assert runner.got.text["j1"] == f"hi from {tmp_path}\nerr\n"


def test_output_is_capped_on_a_character_edge(runner):
    run(runner, "j2", "for i in $(seq 400); do printf 'é'; done")  # 800 bytes, then cut at 1000 of 1200
    run(runner, "j3", "for i in $(seq 600); do printf 'é'; done")
    assert runner.got.wait("j2").truncated is False and runner.got.wait("j3").truncated is True
    assert runner.got.text["j3"] == "é" * 500


def test_kill_ends_the_tree_and_a_timeout_too(runner):
    a, b = random.randint(100_000, 999_999), random.randint(100_000, 999_999)
    run(runner, "j4", f"sleep {a} & sleep {b}")
    deadline = time.monotonic() + 5
    while len(sleeping(a) + sleeping(b)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.kill("j4")
    end = runner.got.wait("j4")
    assert (end.status, end.exit_code) == ("killed", 137)
    time.sleep(0.2)
    assert not sleeping(a) and not sleeping(b)
    assert not runner.kill("j4")  # over
    run(runner, "j5", "echo start; sleep 30", timeout=0.5)
    end = runner.got.wait("j5")
    assert (end.status, end.reason) == ("timed_out", "timed out after 0.5 s")
    assert runner.got.text["j5"] == "start\n"


def test_what_a_job_leaves_running_ends_with_it(runner):
    a = random.randint(100_000, 999_999)
    run(runner, "j6", f"sleep {a} & echo bye")
    assert runner.got.wait("j6").status == "succeeded"
    time.sleep(0.2)
    assert not sleeping(a)


def test_session_end_interrupts_its_jobs(runner):
    run(runner, "j7", "sleep 30")
    runner.session_ended("s1", "deleted")
    end = runner.got.wait("j7")
    assert (end.status, end.reason) == ("interrupted", "the session ended (deleted)")


@pytest.mark.parametrize(("data", "whole"), [
    (b"", 0), (b"abc", 3), ("é".encode(), 2), ("é".encode()[:1], 0), (b"a" + "€".encode()[:2], 1),
    (b"a" + "€".encode(), 4), (b"a" + "😀".encode()[:3], 1), ("😀".encode(), 4),
])
def test_utf8_complete(data, whole):
    assert _utf8_complete(data) == whole
