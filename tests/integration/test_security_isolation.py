"""The shells see nothing of the service, and nothing a client sends is taken as a tmux command.

Against the live stack (real tmux): the environment inside a session, the tmux socket's
directory, and hostile session names, cwds, keys, input and commands.
"""

from __future__ import annotations

import json
import os
import stat
import time
import uuid

import pytest

from tests.conftest import shell_home
from workers.tmux.pool import server_sockets

pytestmark = pytest.mark.integration

SECRET_VALUE = "test-secret-key-not-for-shells"  # the stack's SECRET_KEY (tests/conftest.py)
SERVICE_NAMES = ("SECRET_KEY", "REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED",
                 "VIRTUAL_ENV", "PYTEST_CURRENT_TEST")
SERVICE_PREFIXES = ("CELERY_", "VTERM_", "DJANGO_", "__VTERM")


def _names(env_text: str) -> set[str]:
    return {line.split("=", 1)[0] for line in env_text.splitlines() if "=" in line}


def test_a_shell_environment_holds_no_service_secret(alice, stack, capsys):
    s = alice.create_session(env={"MY_VAR": "mine"})
    sid = s["id"]
    env_out = alice.run(sid, "env")["output"]
    names = _names(env_out)
    assert "MY_VAR" in names and "PATH" in names and "HOME" in names
    leaked = sorted(n for n in names if n in SERVICE_NAMES or n.startswith(SERVICE_PREFIXES))
    assert leaked == [], leaked
    assert SECRET_VALUE not in env_out and stack.config.redis_url not in env_out
    # Nor in the environment of the tmux server or any process of the service: the shell is the
    # first process of its own PID namespace (no parent in sight), and sees no other process.
    assert alice.run(sid, "echo $PPID")["output"] == "0\n"
    every_env = alice.run(sid, "cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'")["output"]
    assert SECRET_VALUE not in every_env
    # (The shell's own nonce is in its own start-up environment: the session's, by design.)
    assert not [n for n in _names(every_env) if (n in SERVICE_NAMES or n.startswith(SERVICE_PREFIXES))
                and n != "__VTERM_NONCE"]
    # Nor in shell variables (set) that bash would hand to children on export.
    set_out = alice.run(sid, "set")["output"]
    assert SECRET_VALUE not in set_out and stack.config.redis_url not in set_out
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    with capsys.disabled():
        print(f"\n[security] env scrub: {len(names)} variables in a shell, service variables found: {leaked}; "
              f"secret value present: {SECRET_VALUE in env_out}")


def test_tmux_socket_directory_is_private(stack):
    for bid in stack.config.backend_ids():
        d = stack.config.data_dir / "tmux" / bid
        mode = stat.S_IMODE(os.stat(d).st_mode)
        assert mode == 0o700, (d, oct(mode))
        socks = server_sockets(d)
        assert socks and all(stat.S_ISSOCK(os.stat(s).st_mode) for s in socks)


HOSTILE_NAMES = ["-t vterm", "; kill-server", "a;b", "\"quoted\" 'single'", "$(touch /tmp/vterm-pwned)",
                 "#{pane_id} #(touch /tmp/vterm-pwned)", "~root", "{ kill-server }", "back\\slash"]


def test_hostile_session_names_are_kept_literally(alice):
    made = []
    for name in HOSTILE_NAMES:
        s = alice.create_session(name=name)
        made.append(s["id"])
        assert s["name"] == name and s["status"] == "active"
        assert alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["name"] == name
    for bad in ("line\nbreak", "esc\x1b[31m", "nul\x00", "bell\x07"):
        r = alice.http.post("/api/v1/sessions/", json={"name": bad})
        assert r.status_code == 400 and "name" in r.json(), (bad, r.text)
    assert alice.run(made[0], "echo alive")["output"] == "alive\n"
    assert not os.path.exists("/tmp/vterm-pwned")
    for sid in made:
        alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_a_hostile_cwd_is_a_directory_not_a_tmux_format(alice, session, stack):
    marker = f"/tmp/vterm-cwd-pwned-{uuid.uuid4().hex[:8]}"  # on the host, where tmux would run a #() job
    name = f"vt-{uuid.uuid4().hex[:8]}-#(touch {marker})-#{{pane_id}}-$(id)-;-\"'"
    host_home, home = shell_home(alice, session["id"], stack.config.data_dir)
    os.makedirs(host_home / name)
    hostile = f"{home}/{name}"
    s = alice.create_session(cwd=hostile)
    assert s["cwd"] == hostile
    assert alice.run(s["id"], "pwd")["output"] == hostile + "\n"
    time.sleep(0.5)  # tmux runs #() jobs in the background: give one the time to show itself
    assert not os.path.exists(marker)
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def _typed_bytes(alice, sid: str, n: int, send, data_dir) -> bytes:
    """Bytes the terminal delivered to a program, read raw (no line editing) until n arrived."""
    host_home, home = shell_home(alice, sid, data_dir)
    name = f"vterm-typed-{uuid.uuid4().hex[:8]}"
    path = host_home / name
    cmd = alice.run(sid, f"stty raw -echo; head -c {n} > {home}/{name}; stty sane", wait=0)
    deadline = time.monotonic() + 10
    while alice.http.get(f"/api/v1/sessions/{sid}/commands/{cmd['id']}/").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # let stty take effect before typing
    send()
    done = alice.wait_command(sid, cmd["id"])
    assert done["status"] == "succeeded", done
    with open(path, "rb") as f:
        data = f.read()
    os.unlink(path)
    return data


def test_hostile_input_is_typed_literally(alice, session, stack):
    sid = session["id"]
    text = ("-t x -l ; kill-server ; \"dq\" 'sq' $(touch /tmp/vterm-pwned) `id` #{pane_id} "
            "#(touch /tmp/vterm-pwned) ~ \\ \\; { } %if \x1b[31mred\x1b[0m é✓")
    expected = text.encode()

    def send():
        r = alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": text})
        assert r.status_code == 202, r.text
    assert _typed_bytes(alice, sid, len(expected), send, stack.config.data_dir) == expected
    assert not os.path.exists("/tmp/vterm-pwned")


def test_key_names_are_validated_and_typed_literally(alice, session, stack):
    sid = session["id"]
    keys = ["-", ";", "#", "~", "'", '"', "\\", "$", "{", "}", "a"]

    def send():
        r = alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": keys})
        assert r.status_code == 202, r.text
    assert _typed_bytes(alice, sid, len(keys), send, stack.config.data_dir) == "".join(keys).encode()
    for bad in (["-t"], ["-l"], ["C-c;kill-server"], ["Enter kill-server"], ["#{pane_id}"], ["$(id)"],
                ["\x1b"], ["NoSuchKey"], ["a b"]):
        r = alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": bad})
        assert r.status_code == 400 and "keys" in r.json(), (bad, r.text)
    assert alice.run(sid, "echo unharmed")["output"] == "unharmed\n"


def test_hostile_commands_run_as_bash_text_only(alice, session):
    sid = session["id"]
    r = alice.run(sid, "-n")  # a command beginning with '-' is a command, not a tmux option
    assert r["status"] == "failed" and r["exit_code"] == 127 and "-n" in r["output"]
    r = alice.run(sid, "-t vterm:0 kill-server")
    assert r["exit_code"] == 127
    r = alice.run(sid, "echo '#{pane_id}' '#(echo no)' '~' '$(no)' \"$(echo yes)\"")
    assert r["output"] == "#{pane_id} #(echo no) ~ $(no) yes\n"
    r = alice.run(sid, "echo a; echo b \\; c")
    assert r["output"] == "a\nb ; c\n"
    r = alice.run(sid, "printf '%s\\n' \"quote\\\"s\" 'it'\\''s'")
    assert r["output"] == "quote\"s\nit's\n"
    r = alice.run(sid, "echo one\necho two")
    assert r["output"] == "one\ntwo\n"
    r = alice.run(sid, "printf '\\033[31mred\\033[0m\\n'")
    assert r["output"] == "red\n" and r["status"] == "succeeded"
    for bad in ("echo \x1b[31m", "echo \x03", "echo \x00", "echo \ud800"):
        # Encoded by hand: JSON may carry a lone surrogate ("\ud800") that httpx would not encode.
        body = json.dumps({"command": bad}).encode()
        resp = alice.http.post(f"/api/v1/sessions/{sid}/commands/", content=body,
                               headers={"Content-Type": "application/json"})
        assert resp.status_code == 400 and "command" in resp.json(), bad
    # The tmux server and other sessions are unharmed.
    other = alice.create_session()
    assert alice.run(other["id"], "echo other")["output"] == "other\n"
    assert alice.run(sid, "echo same")["output"] == "same\n"
    alice.http.delete(f"/api/v1/sessions/{other['id']}/")
