"""Background jobs (docs/api.md, "Jobs") against the live stack: they run beside the shell, with its
cwd and environment, as its user inside its sandbox; their output is read by offset; a kill ends
their whole tree; they end with a timeout and with their session. Host-side checks read /proc."""

from __future__ import annotations

import json
import os
import random
import time

import pytest

from tests.conftest import Api
from tests.integration.test_sandbox import cmdline, fork_flood, host_pids_of_uid

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "failed", "timed_out", "killed", "interrupted")


def start(api: Api, sid: str, command: str, **extra) -> dict:
    r = api.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": command, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def job_url(sid: str, jid: str, tail: str = "") -> str:
    return f"/api/v1/sessions/{sid}/jobs/{jid}/{tail}"


def wait_job(api: Api, sid: str, jid: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = api.http.get(job_url(sid, jid)).json()
        if body["status"] in FINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def output_all(api: Api, sid: str, jid: str, timeout: float = 30) -> tuple[str, list[dict]]:
    """The whole output, read by offsets until eof; and every answer on the way."""
    text, offset, answers = "", 0, []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = api.http.get(job_url(sid, jid, "output/"), params={"offset": offset})
        assert r.status_code == 200, r.text
        body = r.json()
        answers.append(body)
        assert body["offset"] == offset
        text += body["output"]
        offset = body["next_offset"]
        if body["eof"]:
            return text, answers
        time.sleep(0.05)
    pytest.fail(f"no eof within {timeout} s; so far {text!r}")


def mark() -> int:
    """A number no other process on this machine sleeps for."""
    return random.randint(100_000, 999_999)


def sleepers(uid: int, *seconds: int) -> list[int]:
    wanted = tuple(f"sleep {s}" for s in seconds)
    return [p for p in host_pids_of_uid(uid) if cmdline(p).strip() in wanted]


def wait_until(predicate, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.05)
    return predicate()


def test_a_job_runs_beside_the_shell_and_commands_answer_meanwhile(alice, session):
    sid = session["id"]
    job = start(alice, sid, "sleep 3; echo slept")
    assert job["status"] == "running" and job["exit_code"] is None and job["ended_at"] is None
    assert isinstance(job["pid"], int) and job["pid"] > 0 and job["started_at"]
    assert (job["session"], job["command"]) == (sid, "sleep 3; echo slept")
    began = time.monotonic()
    cmd = alice.run(sid, "echo at once", wait=10)
    assert (cmd["status"], cmd["output"]) == ("succeeded", "at once\n")
    assert alice.http.get(job_url(sid, job["id"])).json()["status"] == "running", \
        f"the command waited for the job ({time.monotonic() - began:.1f} s)"
    # The terminal is free too: its screen answers.
    assert alice.http.get(f"/api/v1/sessions/{sid}/screen/").status_code == 200
    done = wait_job(alice, sid, job["id"])
    assert (done["status"], done["exit_code"], done["reason"]) == ("succeeded", 0, "")
    assert done["ended_at"]
    assert output_all(alice, sid, job["id"])[0] == "slept\n"
    listed = alice.http.get(f"/api/v1/sessions/{sid}/jobs/").json()
    assert [j["id"] for j in listed["results"]] == [job["id"]] and listed["count"] == 1


def test_a_job_takes_the_sessions_cwd_and_exported_environment(alice, session):
    sid = session["id"]
    alice.run(sid, "mkdir -p ~/jobdir && cd ~/jobdir && export JOB_GREETING='hello job'")
    home = alice.run(sid, "echo $HOME")["output"].strip()
    job = start(alice, sid, 'pwd; echo "$JOB_GREETING"')
    assert job["cwd"] == f"{home}/jobdir"
    done = wait_job(alice, sid, job["id"])
    assert done["status"] == "succeeded", done
    assert output_all(alice, sid, job["id"])[0] == f"{home}/jobdir\nhello job\n"
    # While a command runs, the shell cannot be asked: the job gets the cwd and environment last known.
    alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "sleep 2"})
    time.sleep(0.3)
    busy = start(alice, sid, 'pwd; echo "$JOB_GREETING"')
    assert wait_job(alice, sid, busy["id"])["status"] == "succeeded"
    assert output_all(alice, sid, busy["id"])[0] == f"{home}/jobdir\nhello job\n"


def test_a_job_runs_as_the_sessions_user_inside_its_sandbox(alice, session, stack):
    sid = session["id"]
    uid = alice.run(sid, "id -u")["output"].strip()
    data_dir = str(stack.config.data_dir)
    job = start(alice, sid, f"id -u; hostname; ls {data_dir} 2>&1; cat /proc/1/cmdline | tr '\\0' ' '; echo")
    assert wait_job(alice, sid, job["id"])["status"] == "succeeded"
    lines = output_all(alice, sid, job["id"])[0].splitlines()
    assert lines[0] == uid and int(uid) >= 200000
    assert lines[1] == "vterm"  # the sandbox's UTS namespace
    assert "No such file or directory" in lines[2], lines
    assert lines[3].startswith("/bin/bash"), lines  # pid 1 of its PID namespace is the session's shell


def test_output_by_offsets(alice, session):
    sid = session["id"]
    job = start(alice, sid, "for i in 1 2 3; do echo line$i; sleep 0.4; done; printf 'é€'")
    text, answers = output_all(alice, sid, job["id"])
    assert text == "line1\nline2\nline3\né€"
    assert len(answers) > 1 and not answers[0]["eof"]
    total = len(text.encode())
    assert answers[-1]["next_offset"] == total
    tail = alice.http.get(job_url(sid, job["id"], "output/"), params={"offset": total - 3}).json()
    assert tail == {"output": "€", "offset": total - 3, "next_offset": total, "eof": True}
    beyond = alice.http.get(job_url(sid, job["id"], "output/"), params={"offset": total + 10}).json()
    assert (beyond["output"], beyond["eof"]) == ("", True)


def test_output_is_capped_like_command_output(alice, session, stack):
    sid = session["id"]
    job = start(alice, sid, "head -c 3000000 /dev/zero | tr '\\0' x")
    done = wait_job(alice, sid, job["id"])
    assert done["status"] == "succeeded" and done["output_truncated"] is True
    text, _ = output_all(alice, sid, job["id"])
    assert text == "x" * (1 << 20)  # VTERM_OUTPUT_LIMIT


def test_kill_ends_the_whole_tree_setsid_children_included(alice, session):
    sid = session["id"]
    uid = int(alice.run(sid, "id -u")["output"])
    a, b, c = mark(), mark(), mark()
    job = start(alice, sid, f"setsid sleep {a} >/dev/null 2>&1 < /dev/null & ( (sleep {b} &) & ); sleep {c}")
    assert len(wait_until(lambda: len(sleepers(uid, a, b, c)) == 3 and sleepers(uid, a, b, c))) == 3
    r = alice.http.post(job_url(sid, job["id"], "kill/"))
    assert r.status_code == 202, r.text
    assert r.json()["id"] == job["id"]
    done = wait_job(alice, sid, job["id"])
    assert done["status"] == "killed" and done["ended_at"], done
    wait_until(lambda: not sleepers(uid, a, b, c), 5)
    assert sleepers(uid, a, b, c) == [], [cmdline(p) for p in sleepers(uid, a, b, c)]
    # The session and its shell carry on.
    assert alice.run(sid, "echo still here")["output"] == "still here\n"
    again = alice.http.post(job_url(sid, job["id"], "kill/"))
    assert again.status_code == 409, again.text


def test_a_job_that_ends_takes_what_it_left_running_with_it(alice, session):
    sid = session["id"]
    uid = int(alice.run(sid, "id -u")["output"])
    a = mark()
    job = start(alice, sid, f"setsid sleep {a} >/dev/null 2>&1 < /dev/null & echo started")
    done = wait_job(alice, sid, job["id"])
    assert (done["status"], done["exit_code"]) == ("succeeded", 0)
    assert wait_until(lambda: not sleepers(uid, a), 5), [cmdline(p) for p in sleepers(uid, a)]


def test_a_job_times_out(alice, session):
    sid = session["id"]
    job = start(alice, sid, "echo before; sleep 30", timeout=1)
    assert job["timeout"] == 1
    done = wait_job(alice, sid, job["id"])
    assert done["status"] == "timed_out" and "timed out after 1 s" in done["reason"], done
    assert output_all(alice, sid, job["id"])[0] == "before\n"  # what it printed until then is kept


def test_a_failing_job_says_its_exit_code(alice, session):
    sid = session["id"]
    job = start(alice, sid, "echo oops >&2; exit 3")
    done = wait_job(alice, sid, job["id"])
    assert (done["status"], done["exit_code"]) == ("failed", 3)
    assert output_all(alice, sid, job["id"])[0] == "oops\n"


def test_jobs_end_with_their_session(alice):
    s = alice.create_session(name="jobs-end")
    sid = s["id"]
    uid = int(alice.run(sid, "id -u")["output"])
    a = mark()
    job = start(alice, sid, f"echo up; sleep {a}")
    assert wait_until(lambda: sleepers(uid, a))
    assert alice.http.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    done = wait_job(alice, sid, job["id"])
    assert done["status"] == "interrupted" and "session ended" in done["reason"], done
    assert wait_until(lambda: not sleepers(uid, a), 5)
    assert output_all(alice, sid, job["id"])[0] == "up\n"
    r = alice.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": "true"})
    assert r.status_code == 409, r.text


def test_jobs_end_when_the_shell_exits(alice):
    s = alice.create_session(name="jobs-exit")
    sid = s["id"]
    try:
        job = start(alice, sid, "sleep 300")
        alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "exit"})
        done = wait_job(alice, sid, job["id"])
        assert done["status"] == "interrupted" and "session ended" in done["reason"], done
    finally:
        alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_running_jobs_per_session_are_capped(alice):
    s = alice.create_session(name="jobs-cap")
    sid = s["id"]
    try:
        for _ in range(10):  # VTERM_MAX_JOBS_PER_SESSION
            start(alice, sid, "sleep 60")
        r = alice.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": "sleep 60"})
        assert r.status_code == 429 and "Retry-After" in r.headers, r.text
        assert "most allowed (10)" in r.json()["detail"]
        first = alice.http.get(f"/api/v1/sessions/{sid}/jobs/").json()["results"][0]
        assert alice.http.post(job_url(sid, first["id"], "kill/")).status_code == 202
        assert wait_job(alice, sid, first["id"])["status"] == "killed"
        start(alice, sid, "true")  # room again
    finally:
        alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_a_job_is_held_by_its_sessions_limits(alice):
    s = alice.create_session(name="jobs-limits", limits={"processes": 40})
    sid = s["id"]
    try:
        job = start(alice, sid, fork_flood(200))
        assert wait_job(alice, sid, job["id"])["status"] == "succeeded"
        out = output_all(alice, sid, job["id"])[0]
        assert out.startswith("refused at ") and int(out.split()[-1]) <= 40, out
        assert alice.run(sid, "echo fine")["output"] == "fine\n"
    finally:
        alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_someone_elses_jobs_are_not_found(alice, bob, session):
    sid = session["id"]
    job = start(alice, sid, "sleep 20")
    try:
        assert bob.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": "id"}).status_code == 404
        assert bob.http.get(f"/api/v1/sessions/{sid}/jobs/").status_code == 404
        for tail in ("", "output/"):
            assert bob.http.get(job_url(sid, job["id"], tail)).status_code == 404
        assert bob.http.post(job_url(sid, job["id"], "kill/")).status_code == 404
        assert alice.http.get(job_url(sid, job["id"])).json()["status"] == "running"
        missing = "00000000-0000-0000-0000-000000000000"
        assert alice.http.get(job_url(sid, missing)).status_code == 404
    finally:
        alice.http.post(job_url(sid, job["id"], "kill/"))


@pytest.mark.parametrize(("body", "field"), [
    ({}, "command"), ({"command": ""}, "command"), ({"command": "   "}, "command"), ({"command": 5}, "command"),
    ({"command": "echo \x1b"}, "command"), ({"command": "true", "timeout": -1}, "timeout"),
    ({"command": "true", "timeout": "5"}, "timeout"), ({"command": "true", "timeout": 0}, "timeout"),
])
def test_bad_job_input_is_a_400_naming_the_field(alice, session, body, field):
    r = alice.http.post(f"/api/v1/sessions/{session['id']}/jobs/", json=body)
    assert r.status_code == 400 and field in r.json(), r.text


def test_bad_offsets_are_a_400(alice, session):
    sid = session["id"]
    job = start(alice, sid, "true")
    for offset in ("-1", "abc", "1.5", str(2**70)):
        r = alice.http.get(job_url(sid, job["id"], "output/"), params={"offset": offset})
        assert r.status_code == 400 and "offset" in r.json(), (offset, r.text)


def test_jobs_are_audited(alice, session, stack):
    sid = session["id"]
    job = start(alice, sid, "sleep 20")
    alice.http.post(job_url(sid, job["id"], "kill/"))
    out = stack.config.manage("vterm_audit_export", "--session", sid).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    started = [r for r in rows if r["action"] == "job.start"]
    killed = [r for r in rows if r["action"] == "job.kill"]
    assert started and started[-1]["detail"]["job_id"] == job["id"] and started[-1]["detail"]["command"] == "sleep 20"
    assert started[-1]["user"] == "alice"
    assert killed and killed[-1]["detail"]["job_id"] == job["id"]


def test_no_job_processes_are_left_on_the_host(alice, session):
    """After all of the above: no process of a job's group outlives it (the session's group has no job groups)."""
    sid = session["id"]
    job = start(alice, sid, "sleep 1")
    wait_job(alice, sid, job["id"])
    for root, dirs, _ in os.walk("/sys/fs/cgroup/pids"):
        assert not any(d == f"job-{job['id']}" for d in dirs), root


def test_cli_jobs_start_ls_logs_kill(stack, alice, session, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    vterm = str(Path(sys.executable).parent / "vterm")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VTERM_", "XDG_CONFIG"))}
    env = {**base, "HOME": str(tmp_path), "VTERM_URL": stack.url, "VTERM_TOKEN": alice.token}

    def cli(*args, timeout=60):
        return subprocess.run([vterm, *args], check=False, env=env, capture_output=True, text=True, timeout=timeout)

    sid = session["id"]
    r = cli("jobs", "start", sid, "--", "for i in 1 2 3; do echo tick $i; sleep 0.3; done; exit 4")
    assert r.returncode == 0, r.stderr
    jid = r.stdout.strip()
    follow = cli("jobs", "logs", "-f", sid, jid[:8])
    assert follow.stdout == "tick 1\ntick 2\ntick 3\n" and follow.returncode == 4, (follow.stdout, follow.stderr)
    assert "job failed" in follow.stderr
    assert cli("jobs", "logs", sid, jid).stdout == "tick 1\ntick 2\ntick 3\n"
    listing = cli("jobs", "ls", sid)
    assert listing.returncode == 0 and listing.stdout.splitlines()[0].split()[:3] == ["ID", "STATUS", "EXIT"]
    assert any(line.startswith(jid) and " failed " in line for line in listing.stdout.splitlines()), listing.stdout

    r = cli("--json", "jobs", "start", "--timeout", "60", sid, "--", "sleep", "50")
    long = json.loads(r.stdout)
    assert (long["status"], long["timeout"]) == ("running", 60)
    killed = cli("jobs", "kill", sid, long["id"])
    assert killed.returncode == 0 and killed.stdout.strip() == f"{long['id']} killed", killed
    again = cli("jobs", "kill", sid, long["id"])
    assert again.returncode == 1 and "already ended" in again.stderr, again.stderr
    assert cli("jobs", "logs", "-f", sid, long["id"]).returncode == 137
    missing = cli("jobs", "logs", sid, "ffffffff")
    assert missing.returncode == 1 and "not found" in missing.stderr


# -- a lost backend, a restarted worker: a stack of its own, at quick failover timings ----------


@pytest.fixture(scope="module")
def fs(redis_url, tmp_path_factory):
    from tests.faults.harness import FaultStack

    # A heartbeat TTL long enough for a worker's restart on a busy machine (the restart test).
    # A command budget small enough to spend in a test (per user: each test here has its own user).
    with FaultStack(redis_url, tmp_path_factory.mktemp("jobs-faults"), prefix="fj", VTERM_HEARTBEAT_TTL=10,
                    VTERM_COMMAND_RATE=0.1, VTERM_COMMAND_BURST=12) as st:
        yield st


def test_a_job_whose_backend_is_lost_ends_interrupted_with_a_reason(fs):
    import signal

    b = fs.backend_ids()[0]
    sid = fs.session_on(b)["id"]
    job = start(fs.api, sid, "echo before the loss; sleep 300")
    assert wait_until(lambda: output_all_now(fs.api, sid, job["id"]) == "before the loss\n")
    fs.stack.stop_process(b, signal.SIGKILL)
    fs.kill_tmux(b)
    try:
        moved = fs.wait_session_active(sid, timeout=60, not_on=b)
        done = wait_job(fs.api, sid, job["id"], timeout=30)
        assert done["status"] == "interrupted", done
        assert f"backend {b} was lost" in done["reason"] and "no heartbeat" in done["reason"], done["reason"]
        assert output_all(fs.api, sid, job["id"])[0] == "before the loss\n"  # what it printed is kept
        # The session goes on where it moved, jobs included.
        again = start(fs.api, sid, "echo on $HOSTNAME")
        assert wait_job(fs.api, sid, again["id"])["status"] == "succeeded" and moved["backend"] != b
    finally:
        fs.restart_worker(b)


def test_a_restarted_worker_ends_the_jobs_it_ran_before(fs):
    import signal

    b = fs.backend_ids()[1]
    sid = fs.session_on(b)["id"]
    uid = int(fs.api.run(sid, "id -u")["output"])
    a = mark()
    job = start(fs.api, sid, f"setsid sleep {a} >/dev/null 2>&1 < /dev/null & sleep {a}")
    assert wait_until(lambda: len(sleepers(uid, a)) == 2)
    fs.stack.stop_process(b, signal.SIGKILL)  # the worker only: its tmux server and shells live on
    fs.restart_worker(b)
    done = wait_job(fs.api, sid, job["id"], timeout=30)
    assert done["status"] == "interrupted", done
    if fs.session(sid)["backend"] == b:
        assert f"worker ({b}) restarted" in done["reason"], done
    else:  # the restart took longer than the heartbeat TTL: the session moved meanwhile
        assert f"backend {b} was lost" in done["reason"], done
    assert wait_until(lambda: not sleepers(uid, a), 10), [cmdline(p) for p in sleepers(uid, a)]
    assert fs.api.run(sid, "echo adopted")["output"] == "adopted\n"  # the shell itself was kept


def test_jobs_spend_the_owners_command_budget(fs):
    api = Api(fs.stack.url, fs.stack.token("jobs-rate"))
    sid = api.create_session()["id"]
    codes = [api.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": "true"}).status_code
             for _ in range(12)]
    assert codes == [201] * 12, codes
    over = api.http.post(f"/api/v1/sessions/{sid}/jobs/", json={"command": "true"})
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1, over.text
    # One budget with commands.
    assert api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "true"}).status_code == 429


def test_a_drain_ends_its_jobs_interrupted_and_the_session_moves(fs):
    b = fs.backend_ids()[0]
    assert wait_until(fs.backends_healthy, 60)  # the tests before restarted a worker
    sid = fs.session_on(b)["id"]
    job = start(fs.api, sid, "echo draining soon; sleep 300")
    assert wait_until(lambda: output_all_now(fs.api, sid, job["id"]) == "draining soon\n")
    assert fs.staff.http.post(f"/api/v1/backends/{b}/drain/").status_code == 202
    fs.wait_session_active(sid, timeout=60, not_on=b)
    done = wait_job(fs.api, sid, job["id"], timeout=30)
    assert done["status"] == "interrupted" and f"backend {b} is draining" in done["reason"], done
    assert output_all(fs.api, sid, job["id"])[0] == "draining soon\n"


def output_all_now(api: Api, sid: str, jid: str) -> str:
    return api.http.get(job_url(sid, jid, "output/")).json()["output"]


def test_the_async_client_starts_follows_and_kills_jobs(stack, alice, session):
    import asyncio

    from vterm.client import AsyncClient

    sid = session["id"]

    async def go():
        async with AsyncClient(stack.url, alice.token) as vt:
            job = await vt.start_job(sid, "echo one; sleep 0.3; echo two")
            text = "".join([t async for t in vt.follow_job_output(sid, job)])
            done = await vt.wait_job(sid, job)
            long = await vt.start_job(sid, "sleep 30", timeout=60)
            await vt.kill_job(sid, long)
            killed = await vt.wait_job(sid, long, wait=20)
            return text, done, killed, [j.id for j in await vt.list_jobs(sid)]

    text, done, killed, listed = asyncio.run(go())
    assert text == "one\ntwo\n" and (done.status, done.exit_code, done.done) == ("succeeded", 0, True)
    assert killed.status == "killed" and listed[-2:] == [done.id, killed.id]
