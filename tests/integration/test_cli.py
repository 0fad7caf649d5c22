"""The `vterm` console script as a user runs it: a subprocess against the live stack, exit codes included;
`attach` through a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from vterm_project.devstack import free_port

pytestmark = pytest.mark.integration

VTERM = str(Path(sys.executable).parent / "vterm")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def env(stack, alice, home):
    """A user's environment: URL and token from VTERM_*, config under a home of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VTERM_", "XDG_CONFIG"))}
    return {**base, "HOME": str(home), "VTERM_URL": stack.url, "VTERM_TOKEN": alice.token}


def vterm(env, *args, input=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([VTERM, *args], check=False, env=env, capture_output=True, text=True, input=input, timeout=timeout)


@pytest.fixture
def named(env, alice):
    name = f"cli-{time.monotonic_ns()}"
    r = vterm(env, "sessions", "new", "--name", name, "--env", "GREETING=hello cli", "--cwd", "/tmp")
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    yield name, sid
    alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_sessions_new_list_show_rm(env, alice):
    r = vterm(env, "--json", "sessions", "new", "--name", "cli-json", "--env", "A=1", "--env", "B=x=y")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["name"], s["env"], s["status"]) == ("cli-json", {"A": "1", "B": "x=y"}, "active")
    listing = vterm(env, "sessions")
    assert listing.returncode == 0 and s["id"] in listing.stdout and "cli-json" in listing.stdout
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATUS"]
    as_json = json.loads(vterm(env, "sessions", "--json").stdout)
    assert s["id"] in [x["id"] for x in as_json]
    shown = json.loads(vterm(env, "sessions", "show", "cli-js", "--json").stdout)
    assert shown["id"] == s["id"], "a unique name prefix finds the session"
    rm = vterm(env, "sessions", "rm", s["id"][:8])
    assert rm.returncode == 0 and s["id"] in rm.stdout, rm.stderr
    assert alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["status"] in ("terminating", "terminated")
    assert s["id"] not in vterm(env, "sessions").stdout, "ended sessions are listed only with --all"
    assert s["id"] in vterm(env, "sessions", "--all").stdout


def test_sessions_new_bad_input(env):
    r = vterm(env, "sessions", "new", "--cwd", "relative")
    assert r.returncode == 1 and "cwd" in r.stderr and "absolute" in r.stderr
    r = vterm(env, "sessions", "new", "--env", "NOEQUALS")
    assert r.returncode == 1 and "NAME=VALUE" in r.stderr


def test_run_prints_output_and_exits_with_the_commands_code(env, named):
    name, sid = named
    r = vterm(env, "run", name, "--", 'echo "$GREETING"; pwd')
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello cli\n/tmp\n", "")
    r = vterm(env, "run", name, "--", "ls", "/does-not-exist")
    assert r.returncode == 2 and "does-not-exist" in r.stdout
    assert vterm(env, "run", name, "--", "(exit 7)").returncode == 7
    assert vterm(env, "run", sid, "--", "printf", "no-newline").stdout == "no-newline"
    r = vterm(env, "run", "--json", name, "--", "cd", "/usr")
    assert r.returncode == 0 and json.loads(r.stdout)["cwd"] == "/usr"
    # In a shell script: output piped on, exit code tested.
    script = f"{VTERM} run {name} -- 'seq 3' | tail -1 && {VTERM} run {name} -- false || echo failed-as-expected"
    r = subprocess.run(["bash", "-c", script], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout == "3\nfailed-as-expected\n", r.stderr


def test_run_timed_out_and_interrupted(env, named, alice):
    name, sid = named
    r = vterm(env, "run", "--timeout", "0.5", name, "--", "sleep", "20")
    assert r.returncode == 124 and "timed out" in r.stderr
    r = vterm(env, "run", "--idle-timeout", "1", name, "--", "echo begun; sleep 20")
    assert (r.returncode, r.stdout) == (124, "begun\n") and "no output for 1 s" in r.stderr, r.stderr
    proc = subprocess.Popen([VTERM, "run", name, "--", "sleep 30"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cmds = alice.http.get(f"/api/v1/sessions/{sid}/commands/").json()["results"]
        if cmds and cmds[-1]["command"] == "sleep 30" and cmds[-1]["status"] == "running":
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # Ctrl-C at the user's terminal
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in err, err
    last = alice.http.get(f"/api/v1/sessions/{sid}/commands/").json()["results"][-1]
    assert (last["command"], last["status"]) == ("sleep 30", "interrupted")


def test_history(env, named):
    name, _ = named
    vterm(env, "run", name, "--", "echo one")
    vterm(env, "run", name, "--", "false")
    r = vterm(env, "history", name)
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and len(lines) == 2
    assert "succeeded" in lines[0] and lines[0].endswith("$ echo one")
    assert "failed" in lines[1] and lines[1].endswith("$ false")
    assert "| one" in vterm(env, "history", name, "--output").stdout
    hist = json.loads(vterm(env, "history", name, "--json").stdout)
    assert [(c["seq"], c["command"], c["exit_code"]) for c in hist] == [(1, "echo one", 0), (2, "false", 1)]


def test_clear_errors(env, stack, named):
    name, _ = named
    r = vterm(env, "run", "no-such-session", "--", "true")
    assert r.returncode == 125 and "no session" in r.stderr
    r = vterm(env, "history", "00000000-0000-0000-0000-000000000000")
    assert r.returncode == 1 and "not found" in r.stderr and "404" in r.stderr
    r = vterm({**env, "VTERM_TOKEN": "wrong"}, "sessions")
    assert r.returncode == 1 and "did not accept the token" in r.stderr and "VTERM_TOKEN" in r.stderr
    r = vterm({**env, "VTERM_URL": f"http://127.0.0.1:{free_port()}"}, "run", name, "--", "true")
    assert r.returncode == 125 and "cannot reach" in r.stderr and "VTERM_URL" in r.stderr
    no_token = {k: v for k, v in env.items() if k != "VTERM_TOKEN"}
    r = vterm(no_token, "sessions")
    assert r.returncode == 1 and "no API token" in r.stderr
    vterm(env, "sessions", "new", "--name", f"{name}-twin")
    r = vterm(env, "run", name[:6], "--", "true")
    assert r.returncode == 125 and "matches" in r.stderr, "an ambiguous prefix is refused, not guessed"


def test_login_saves_url_and_token_privately(stack, alice, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VTERM_", "XDG_CONFIG"))}
    env["HOME"] = str(tmp_path)
    r = vterm(env, "login", "--url", stack.url, input="wrong-token\n")
    assert r.returncode == 1 and "did not accept" in r.stderr
    config = tmp_path / ".config" / "vterm" / "config.json"
    assert not config.exists()
    r = vterm(env, "login", "--url", stack.url, input=alice.token + "\n")
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": stack.url, "token": alice.token}
    r = vterm(env, "sessions", "--json")
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), list), r.stderr
    r = vterm({**env, "VTERM_TOKEN": "env-wins"}, "sessions")
    assert r.returncode == 1, "the environment overrides the saved login"


def _attach(env, name, rows=30, cols=100) -> pexpect.spawn:
    child = pexpect.spawn(VTERM, ["attach", name], env=env, dimensions=(rows, cols), encoding="utf-8",
                          timeout=20)
    child.expect(r"[#$]")  # the session's prompt, drawn from its screen
    return child


def test_attach_through_a_real_terminal(env, named, alice):
    name, sid = named
    child = _attach(env, name)
    child.send("echo attached-$((6*7))\r")
    child.expect("attached-42")
    assert alice.http.get(f"/api/v1/sessions/{sid}/").json()[("cols")] == 100, "attach sizes the session"
    child.setwinsize(33, 111)  # the window changes: SIGWINCH → resize frame
    deadline = time.monotonic() + 20
    while alice.http.get(f"/api/v1/sessions/{sid}/").json()["cols"] != 111 and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send("stty size\r")
    child.expect("33 111")
    child.send("sleep 30\r")
    time.sleep(0.5)
    child.send("\x03")  # raw mode: Ctrl-C goes to the remote shell, not to vterm
    child.send("echo after-$((1+1))-ctrl-c\r")
    child.expect("after-2-ctrl-c")
    child.send("\x1d")  # Ctrl-]
    child.expect("detached")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert alice.http.get(f"/api/v1/sessions/{sid}/").json()["status"] == "active", "detach leaves it running"
    # What was typed in the terminal is the session's: it shows up for the next viewer too.
    child = _attach(env, name)
    child.expect("after-2-ctrl-c")
    child.send("\x1d")
    child.expect(pexpect.EOF)


def test_attach_ends_with_the_session_and_refuses_a_pipe(env, named, alice):
    name, sid = named
    child = _attach(env, name)
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    child.expect(r"session (terminating|terminated)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    r = vterm(env, "attach", sid)
    assert r.returncode == 2 and "needs a terminal" in r.stderr


def test_attach_reconnects_after_the_web_server_restarts(env, named, stack):
    name, _ = named
    child = _attach(env, name)
    web = stack.spec("web")
    stack.stop_process("web")
    child.expect("reconnecting")
    stack.start_process(web)
    child.expect_exact("[reconnected]", timeout=90)
    child.send("echo back-$((40+2))\r")
    child.expect("back-42", timeout=60)
    child.send("\x1d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
