"""Sandboxed sessions (docs/security.md): each probe is typed into a real shell of the live stack.

Two users, alice and bob; where a test needs their sessions on one backend it places them so.
Host-side checks (what runs, under which uid, in which cgroup) read /proc and the cgroup files.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time

import pytest

from tests.conftest import Api, admin_browser
from tests.prom import scrape, value
from vterm_project.devstack import ROOT

SECRET_VALUE = "test-secret-key-not-for-shells"  # the stack's SECRET_KEY (tests/conftest.py)


def out(api: Api, sid: str, command: str, wait: float = 30) -> dict:
    r = api.run(sid, command, wait=wait)
    assert r["status"] not in ("queued", "running"), r
    return r


def on_same_backend(api: Api, backend: str, tries: int = 8, **body) -> dict:
    """A session of ``api``'s user on ``backend`` (placement alternates by load)."""
    made = []
    try:
        for _ in range(tries):
            s = api.create_session(**body)
            if s["backend"] == backend:
                return s
            made.append(s)
        pytest.fail(f"no session landed on {backend}")
    finally:
        for s in made:
            api.http.delete(f"/api/v1/sessions/{s['id']}/")


def host_pids_of_uid(uid: int) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("Uid:") and int(line.split()[1]) == uid:
                            pids.append(int(p))
            except OSError:
                pass
    return pids


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def fork_flood(n: int) -> str:
    """A shell command forking ``n`` sleepers: prints where a fork was refused, then ends them all."""
    return (f"perl -e 'my @k; for (1..{n}) {{ my $p = fork; if (!defined $p) {{ print \"refused at $_\\n\"; last }} "
            "if (!$p) { sleep 60; exit } push @k, $p } kill 9, @k; waitpid($_, 0) for @k'")


@pytest.fixture
def bob_session(bob):
    s = bob.create_session(name="bob")
    yield s
    bob.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_each_user_has_a_uid_of_their_own_and_a_home_that_persists(alice, bob, session, bob_session):
    a = out(alice, session["id"], "id -u; id -un; echo $HOME; pwd")
    b = out(bob, bob_session["id"], "id -u")
    uid_a, name_a, home_a, cwd_a = a["output"].split()
    assert uid_a != "0" and b["output"].strip() != "0" and uid_a != b["output"].strip()
    assert int(uid_a) != os.getuid()
    assert (name_a, home_a, cwd_a) == ("alice", "/home/alice", "/home/alice")
    assert out(alice, session["id"], "echo kept > ~/note.txt")["status"] == "succeeded"
    # Another session of alice's (same uid, same home), wherever it is placed.
    other = alice.create_session(name="second")
    try:
        r = out(alice, other["id"], "id -u; cat ~/note.txt")
        assert r["output"].split() == [uid_a, "kept"]
    finally:
        alice.http.delete(f"/api/v1/sessions/{other['id']}/")


def test_the_service_and_its_data_are_out_of_sight(alice, session, stack):
    data_dir = str(stack.config.data_dir)
    r = out(alice, session["id"],
            f"cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' | grep -c SECRET_KEY; "
            f"ls {data_dir} 2>&1; ls {data_dir}/tmux 2>&1; ls /work /root 2>&1; "
            f"grep -rl {SECRET_VALUE} /etc /tmp /home /run 2>/dev/null | wc -l")
    lines = r["output"].splitlines()
    assert lines[0] == "0", r["output"]
    assert "No such file or directory" in lines[1] and "No such file or directory" in lines[2], r["output"]
    assert SECRET_VALUE not in r["output"] and lines[-1] == "0", r["output"]
    # Nothing of the service runs where the shell can see it: its own processes only.
    ps = out(alice, session["id"], "ps -eo pid=,comm=")["output"].split("\n")
    comms = [ln.split()[1] for ln in ps if ln.strip()]
    assert set(comms) <= {"bwrap", "bash", "ps"}, comms
    # The system is read-only; the shell's own /tmp is writable.
    r = out(alice, session["id"], "touch /usr/x 2>&1; touch /etc/x 2>&1; touch /tmp/x && echo tmp-ok")
    assert "Read-only file system" in r["output"] and "tmp-ok" in r["output"], r["output"]


def test_the_shell_has_its_terminal_by_name_and_no_one_elses(alice, session, bob_session):
    """`tty` names the pane's terminal; the user can reopen it (a program asking for a password
    does); the sandbox's /dev/pts shows no other session's terminal."""
    r = out(alice, session["id"], "tty; echo via-name > \"$(tty)\"; stat -c %u \"$(tty)\"; id -u; ls /dev/pts")
    lines = r["output"].splitlines()
    assert lines[0] == "/dev/console", r["output"]
    assert "via-name" in lines, r["output"]  # written through the name, read back from the pane
    owner, uid = lines[lines.index("via-name") + 1: lines.index("via-name") + 3]
    assert owner == uid, r["output"]
    assert lines[-1] == "ptmx", r["output"]  # its own pty instance: nothing of bob's
    # A pty of its own still works inside (script, expect, a nested tmux).
    r = out(alice, session["id"], "script -qc 'tty' /dev/null")
    assert r["output"].strip().startswith("/dev/pts/"), r["output"]


def test_a_user_cannot_reach_another_users_home_or_processes(alice, bob, stack, session):
    bob_s = on_same_backend(bob, session["backend"], name="bob-neighbour")
    try:
        b = out(bob, bob_s["id"], "echo secret-of-bob > ~/private.txt; id -u; sleep 300 & echo started")
        bob_uid = int(b["output"].split()[0])
        deadline = time.monotonic() + 10
        bob_sleep = []
        while not bob_sleep and time.monotonic() < deadline:
            bob_sleep = [p for p in host_pids_of_uid(bob_uid) if cmdline(p).startswith("sleep 300")]
            time.sleep(0.1)
        assert bob_sleep, "bob's sleep not found on the host"
        homes = stack.config.data_dir / "homes"
        r = out(alice, session["id"],
                f"ls /home; cat /home/bob/private.txt 2>&1; ls {homes} 2>&1; cat {homes}/{bob_uid}/private.txt 2>&1; "
                f"kill -9 {bob_sleep[0]} 2>&1; pkill -9 sleep; echo done")
        assert "secret-of-bob" not in r["output"], r["output"]
        assert r["output"].splitlines()[0] == "alice", r["output"]
        assert "No such file or directory" in r["output"]
        os.kill(bob_sleep[0], 0)  # bob's process is still alive
        # On the host too, bob's home is his alone.
        st = os.stat(homes / str(bob_uid))
        assert (st.st_uid, st.st_mode & 0o777) == (bob_uid, 0o700)
    finally:
        bob.http.delete(f"/api/v1/sessions/{bob_s['id']}/")


def test_ending_a_session_ends_everything_it_started(alice):
    s = alice.create_session(name="daemons")
    uid = int(out(alice, s["id"], "id -u")["output"])
    out(alice, s["id"], "setsid sleep 401 >/dev/null 2>&1 < /dev/null & nohup sleep 402 >/dev/null 2>&1 & "
                        "( (sleep 403 &) & ); disown -a")
    deadline = time.monotonic() + 10
    mine = []
    while len(mine) < 3 and time.monotonic() < deadline:
        mine = [p for p in host_pids_of_uid(uid) if cmdline(p).startswith(("sleep 401", "sleep 402", "sleep 403"))]
        time.sleep(0.1)
    assert len(mine) == 3, [cmdline(p) for p in host_pids_of_uid(uid)]
    assert alice.http.delete(f"/api/v1/sessions/{s['id']}/").status_code == 204
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in mine) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [cmdline(p) for p in mine if os.path.exists(f"/proc/{p}")]
    assert not left, f"left running 5 s after the delete: {left}"


def test_a_shell_that_exits_takes_its_daemons_with_it(alice):
    s = alice.create_session(name="exits")
    try:
        uid = int(out(alice, s["id"], "id -u")["output"])
        out(alice, s["id"], "setsid sleep 404 >/dev/null 2>&1 < /dev/null &")
        alice.http.post(f"/api/v1/sessions/{s['id']}/commands/", json={"command": "exit"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not [p for p in host_pids_of_uid(uid) if cmdline(p).startswith("sleep 404")]:
                break
            time.sleep(0.1)
        assert not [p for p in host_pids_of_uid(uid) if cmdline(p).startswith("sleep 404")]
    finally:
        alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_limits_stop_a_fork_flood_and_a_memory_hog_and_the_neighbour_carries_on(alice, bob, session):
    bob_s = on_same_backend(bob, session["backend"], name="bob-neighbour")
    try:
        hog = alice.http.post(f"/api/v1/sessions/{session['id']}/commands/", json={
            "command": "python3 -c 'x = b\"1\" * (6 << 30)'"}).json()
        began = time.monotonic()
        echo = bob.run(bob_s["id"], "echo neighbour-ok", wait=30)
        neighbour_s = time.monotonic() - began
        assert echo["status"] == "succeeded" and echo["output"] == "neighbour-ok\n"
        r = alice.wait_command(session["id"], hog["id"], timeout=120)
        assert (r["status"], r["exit_code"]) == ("failed", 137), r
        assert r["reason"] == "killed: out of memory (limit 2 GiB)", r
        f = out(alice, session["id"], fork_flood(3000), wait=60)
        refused_at = int(f["output"].split("refused at ")[1].split()[0])
        assert refused_at < 3000 and refused_at <= 512, f["output"]
        echo = bob.run(bob_s["id"], "echo still-ok", wait=30)
        assert echo["status"] == "succeeded"
        # alice's session is still usable.
        assert out(alice, session["id"], "echo usable")["output"] == "usable\n"
        print(f"neighbour echo during the hog: {neighbour_s * 1000:.0f} ms")
    finally:
        bob.http.delete(f"/api/v1/sessions/{bob_s['id']}/")


def session_cpu_seconds(session_id: str) -> float:
    """CPU time used by everything in the session's cgroup, read on the host (v1 or v2)."""
    v1 = os.path.isdir("/sys/fs/cgroup/cpuacct")
    for root, dirs, _ in os.walk("/sys/fs/cgroup/cpuacct" if v1 else "/sys/fs/cgroup"):
        if session_id in dirs:
            with open(os.path.join(root, session_id, "cpuacct.usage" if v1 else "cpu.stat")) as f:
                return int(f.read()) / 1e9 if v1 else int(f.readline().split()[1]) / 1e6
    pytest.fail(f"no cgroup with CPU accounting for session {session_id}")


def test_cpu_is_shared_per_session_not_per_process(alice, bob, session):
    """Four busy loops in alice's session and one in bob's, on one backend: with a fair share per
    session bob's loop gets about what all of alice's get together (per process it would get a quarter)."""
    bob_s = on_same_backend(bob, session["backend"], name="bob-cpu")
    busy = "for i in $(seq {n}); do (while :; do :; done) & done; sleep 6; kill $(jobs -p); wait"
    try:
        runs = [(api, s, api.http.post(f"/api/v1/sessions/{s['id']}/commands/",
                                       json={"command": busy.format(n=n)}).json())
                for api, s, n in ((alice, session, 4), (bob, bob_s, 1))]
        time.sleep(1.5)  # both running
        before = [session_cpu_seconds(s["id"]) for _, s, _ in runs]
        time.sleep(3)
        used = [session_cpu_seconds(s["id"]) - b for (_, s, _), b in zip(runs, before)]
        for api, s, cmd in runs:
            assert api.wait_command(s["id"], cmd["id"], timeout=60)["status"] == "succeeded"
        print(f"CPU seconds over 3 s: alice (4 loops) {used[0]:.2f}, bob (1 loop) {used[1]:.2f}")
        assert used[0] > 0.3 and used[1] >= 0.6 * used[0], used
    finally:
        bob.http.delete(f"/api/v1/sessions/{bob_s['id']}/")


def test_limits_can_be_lowered_per_session_not_raised(alice, stack):
    raised = alice.create_session(limits={"memory_mb": 4096, "processes": 100000})
    alice.http.delete(f"/api/v1/sessions/{raised['id']}/")
    assert raised["limits"] == {"processes": 512, "memory_mb": 2048, "cpu_weight": 100}, raised
    r = alice.http.post("/api/v1/sessions/", json={"limits": {"bogus": 1}})
    assert r.status_code == 400 and "bogus" in r.json()["limits"], r.text
    s = alice.create_session(limits={"memory_mb": 64, "processes": 32})
    try:
        assert s["limits"] == {"processes": 32, "memory_mb": 64, "cpu_weight": 100}
        r = out(alice, s["id"], "python3 -c 'x = b\"1\" * (200 << 20)'")
        assert (r["exit_code"], r["reason"]) == (137, "killed: out of memory (limit 64 MiB)"), r
        r = out(alice, s["id"], fork_flood(100))
        assert int(r["output"].split("refused at ")[1].split()[0]) <= 32, r
        assert out(alice, s["id"], "echo alive")["output"] == "alive\n"
        # Both events are counted: on the session (API, admin) and pool-wide in /metrics.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            usage = alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["resource_usage"] or {}
            series = scrape(stack.url)
            if (usage.get("oom_kills", 0) >= 1 and usage.get("process_limit_hits", 0) >= 1
                    and value(series, "vterm_sandbox_limit_events_total", kind="memory") >= 1
                    and value(series, "vterm_sandbox_limit_events_total", kind="processes") >= 1):
                break
            time.sleep(0.5)
        assert usage.get("oom_kills", 0) >= 1 and usage.get("process_limit_hits", 0) >= 1, usage
        assert value(series, "vterm_session_oom_kills", session=s["id"]) >= 1
        assert value(series, "vterm_sandbox_limit_events_total", kind="memory") >= 1
        assert value(series, "vterm_sandbox_limit_events_total", kind="processes") >= 1
    finally:
        alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_sandbox_mode_is_shown(stack, alice):
    ready = alice.http.get("/readyz").json()
    modes = ready["checks"]["sandbox"]
    assert set(modes) == set(stack.config.backend_ids()), ready
    assert all(m.startswith("bubblewrap, cgroup v") for m in modes.values()), modes
    staff = Api(stack.url, stack.token("sandbox-staff", staff=True))
    backends = staff.http.get("/api/v1/backends/").json()
    rows = backends["results"] if isinstance(backends, dict) else backends
    assert all(b["sandbox"].startswith("bubblewrap") for b in rows if b["id"] in modes), rows


def test_a_backend_that_cannot_sandbox_refuses_to_start(stack):
    spec = stack.spec(stack.config.backend_ids()[0])
    env = {**stack.config.env(), **spec.env, "VTERM_BACKEND_ID": "nosandbox-1",
           "VTERM_SANDBOX_BWRAP": "/nonexistent/bwrap"}
    argv = [a.replace(stack.config.backend_ids()[0], "nosandbox-1") for a in spec.argv]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = proc.stdout + proc.stderr
    assert "bwrap at /nonexistent/bwrap" in log and "VTERM_SANDBOX=off" in log, log[-3000:]
    state_dir = os.path.join(str(stack.config.data_dir), "tmux", "nosandbox-1", "sandbox")
    group = f"vterm-nosandbox-1-{hashlib.sha1(os.path.abspath(state_dir).encode()).hexdigest()[:8]}"
    left = [c for c in ("pids", "memory", "cpu") if os.path.exists(f"/sys/fs/cgroup/{c}/{group}")]
    assert not left, left  # the refused backend's group is not left behind


def test_staff_set_a_users_limits_in_the_admin(stack):
    """The admin's shell account page: staff lower (or raise) one user's limits; new sessions take them."""
    dave = Api(stack.url, stack.token("dave"))
    first = dave.create_session(name="before")  # allocates dave's shell account
    dave.http.delete(f"/api/v1/sessions/{first['id']}/")
    code = "from sessions.models import ShellAccount; print(ShellAccount.objects.get(user__username='dave').pk)"
    pk = stack.config.manage("shell", "-c", code).stdout.strip().splitlines()[-1]
    page = f"/admin/vterm_sessions/shellaccount/{pk}/change/"
    with admin_browser(stack, "limits-admin", page) as (browser, r):
        assert r.status_code == 200 and "uid" in r.text, r.text[:500]
        r = browser.post(page, data={"max_processes": "64", "memory_mb": "128", "cpu_weight": "",
                                     "csrfmiddlewaretoken": browser.cookies["csrftoken"], "_save": "Save"},
                         headers={"Referer": stack.url + page})
        assert r.status_code == 200, r.text[:500]
        listing = browser.get("/admin/vterm_sessions/shellaccount/").text
        assert "processes 64, memory_mb 128, cpu_weight 100" in listing
    s = dave.create_session(name="after")
    try:
        assert s["limits"] == {"processes": 64, "memory_mb": 128, "cpu_weight": 100}, s
        r = out(dave, s["id"], "python3 -c 'x = b\"1\" * (300 << 20)'")
        assert (r["exit_code"], r["reason"]) == (137, "killed: out of memory (limit 128 MiB)"), r
    finally:
        dave.http.delete(f"/api/v1/sessions/{s['id']}/")
