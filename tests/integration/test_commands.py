"""Commands over REST against the live stack: real Daphne, Celery workers, Redis and tmux."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.integration


def test_output_exit_code_and_cwd(alice, session):
    sid = session["id"]
    r = alice.run(sid, "echo hello")
    assert (r["status"], r["exit_code"], r["output"]) == ("succeeded", 0, "hello\n")
    assert r["seq"] == 1 and r["session"] == sid
    r = alice.run(sid, "cd /tmp && pwd")
    assert r["output"] == "/tmp\n" and r["cwd"] == "/tmp"
    r = alice.run(sid, "ls does-not-exist")
    assert r["status"] == "failed" and r["exit_code"] == 2 and "does-not-exist" in r["output"]
    assert r["cwd"] == "/tmp", "cd persists into later commands"


def test_multiline_unicode_and_no_trailing_newline(alice, session):
    sid = session["id"]
    r = alice.run(sid, "for i in 1 2 3; do\n  echo line $i\ndone")
    assert r["output"] == "line 1\nline 2\nline 3\n"
    r = alice.run(sid, "echo 'héllo wörld ✓ 日本'")
    assert r["output"] == "héllo wörld ✓ 日本\n"
    r = alice.run(sid, "printf 'no newline'")
    assert r["output"] == "no newline" and r["status"] == "succeeded"
    r = alice.run(sid, "cat <<'EOF'\na\tb\n$HOME\nEOF")
    assert r["output"] == "a\tb\n$HOME\n"


def test_output_that_looks_like_marks_does_not_end_the_command(alice, session):
    sid = session["id"]
    fake = r"printf '\033]133;D;0;not-the-nonce;/x\007\033]133;C;x\007tail\n'; sleep 0.2; echo done"
    r = alice.run(sid, fake)
    assert r["status"] == "succeeded"
    assert r["output"].endswith("tail\ndone\n"), r["output"]
    raw = alice.http.get(f"/api/v1/sessions/{sid}/commands/{r['id']}/output", params={"raw": 1})
    assert raw.status_code == 200 and b"not-the-nonce" in raw.content


def test_exit_codes_of_subshells_and_builtins(alice, session):
    sid = session["id"]
    assert alice.run(sid, "(exit 7)")["exit_code"] == 7
    assert alice.run(sid, "bash -c 'exit 42'")["exit_code"] == 42
    assert alice.run(sid, "false")["status"] == "failed"
    r = alice.run(sid, "true")
    assert (r["status"], r["exit_code"]) == ("succeeded", 0)


def test_environment_persists(alice):
    s = alice.create_session(env={"GREETING": "hi there"})
    sid = s["id"]
    assert s["env"] == {"GREETING": "hi there"}
    assert alice.run(sid, 'echo "$GREETING"')["output"] == "hi there\n"
    alice.run(sid, "export COUNT=41")
    assert alice.run(sid, "echo $((COUNT + 1))")["output"] == "42\n"
    alice.http.delete(f"/api/v1/sessions/{sid}/")


def test_large_output_and_truncation(alice, session):
    sid = session["id"]
    r = alice.run(sid, "head -c 1000000 /dev/zero | tr '\\0' x", wait=60)
    assert r["status"] == "succeeded"
    assert len(r["output"]) == 1_000_000 and set(r["output"]) == {"x"} and not r["output_truncated"]
    r = alice.run(sid, "seq 1 400000", wait=60)  # 2.7 MB: past the 1 MiB cap
    assert r["status"] == "succeeded" and r["output_truncated"] is True
    assert r["output"].startswith("1\n2\n3\n") and len(r["output"]) <= 1 << 20
    assert alice.run(sid, "echo still fine")["output"] == "still fine\n"


def test_commands_run_in_order(alice, session):
    sid = session["id"]
    ids = []
    for i in range(10):
        r = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo {i}; sleep 0.0{i}"})
        assert r.status_code == 201 and r.json()["status"] in ("queued", "running", "succeeded")
        ids.append(r.json()["id"])
    results = [alice.wait_command(sid, cid) for cid in ids]
    assert [r["output"] for r in results] == [f"{i}\n" for i in range(10)]
    assert [r["seq"] for r in results] == sorted(r["seq"] for r in results)
    starts = [r["started_at"] for r in results]
    ends = [r["finished_at"] for r in results]
    assert all(ends[i] <= starts[i + 1] for i in range(9)), "one command at a time, in order"
    history = alice.http.get(f"/api/v1/sessions/{sid}/commands/").json()
    assert [c["id"] for c in history["results"]][-10:] == ids


def test_long_command_does_not_delay_another_session_on_the_same_backend(alice):
    a = alice.create_session(name="slow")
    b = None
    for _ in range(6):  # sessions alternate between backends: find one beside `a`
        cand = alice.create_session(name="quick")
        if cand["backend"] == a["backend"]:
            b = cand
            break
    assert b is not None, "no second session landed on the same backend"
    slow = alice.http.post(f"/api/v1/sessions/{a['id']}/commands/", json={"command": "sleep 3"}).json()
    time.sleep(0.3)
    r = alice.run(b["id"], "echo quick", wait=10)
    assert r["status"] == "succeeded" and r["output"] == "quick\n"
    assert alice.http.get(f"/api/v1/sessions/{a['id']}/commands/{slow['id']}/").json()["status"] == "running"
    assert alice.wait_command(a["id"], slow["id"])["status"] == "succeeded"


def test_timeout_ends_command_and_session_stays_usable(alice, session):
    sid = session["id"]
    r = alice.run(sid, "sleep 30", timeout=0.5, wait=20)
    assert r["status"] == "timed_out" and "timed out" in r["reason"]
    r = alice.run(sid, "trap '' INT; sleep 30", timeout=0.5, wait=30)  # ignores Ctrl-C: killed instead
    assert r["status"] == "timed_out"
    assert alice.run(sid, "echo after")["output"] == "after\n"


def test_interrupt_running_and_queued(alice, session):
    sid = session["id"]
    running = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "sleep 30"}).json()
    queued = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "echo never"}).json()
    deadline = time.monotonic() + 10
    while alice.http.get(f"/api/v1/sessions/{sid}/commands/{running['id']}/").json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = alice.http.post(f"/api/v1/sessions/{sid}/commands/{queued['id']}/interrupt/")
    assert r.status_code == 202
    r = alice.http.post(f"/api/v1/sessions/{sid}/commands/{running['id']}/interrupt/")
    assert r.status_code == 202
    assert alice.wait_command(sid, running["id"])["status"] == "interrupted"
    q = alice.wait_command(sid, queued["id"])
    assert q["status"] == "interrupted" and q["output"] == ""
    again = alice.http.post(f"/api/v1/sessions/{sid}/commands/{running['id']}/interrupt/")
    assert again.status_code == 409
    assert alice.run(sid, "echo ok")["output"] == "ok\n"


def test_program_waiting_on_stdin_gets_input(alice, session):
    sid = session["id"]
    cmd = alice.http.post(f"/api/v1/sessions/{sid}/commands/",
                          json={"command": "read -p 'name? ' n; echo \"hello $n\""}).json()
    deadline = time.monotonic() + 10
    while "name?" not in "\n".join(alice.http.get(f"/api/v1/sessions/{sid}/screen/").json()["lines"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "vterm\n"})
    assert r.status_code == 202
    done = alice.wait_command(sid, cmd["id"])
    assert done["status"] == "succeeded" and done["output"].endswith("hello vterm\n")


def test_keys_reach_an_interactive_program(alice, session):
    sid = session["id"]
    cmd = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "cat"}).json()
    time.sleep(0.3)
    alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "typed"})
    alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["Enter", "C-d"]})
    done = alice.wait_command(sid, cmd["id"])
    assert done["status"] == "succeeded" and "typed\n" in done["output"]


def test_pagers_do_not_swallow_later_commands(alice, session):
    sid = session["id"]
    alice.run(sid, "cd $(mktemp -d) && git init -q . && git -c user.email=a@b -c user.name=a commit -q "
                   "--allow-empty -m first-commit")
    r = alice.run(sid, "git log", wait=20)
    assert r["status"] == "succeeded" and "first-commit" in r["output"]
    r = alice.run(sid, "man bash 2>/dev/null | head -3; echo manned", wait=20)
    assert r["output"].endswith("manned\n")
    assert alice.run(sid, "echo next")["output"] == "next\n"


def test_prompt_changes_do_not_break_completion(alice, session):
    sid = session["id"]
    r = alice.run(sid, "export PS1='custom> '")
    assert r["status"] == "succeeded"
    r = alice.run(sid, "export PROMPT_COMMAND='echo hijack'")
    assert r["status"] == "failed" and "readonly" in r["output"], "refused clearly"
    assert alice.run(sid, "echo still works")["output"] == "still works\n"


def test_incomplete_command_fails_clearly(alice, session):
    sid = session["id"]
    r = alice.run(sid, 'echo "unterminated')
    assert r["status"] == "failed" and "incomplete command" in r["output"]
    assert alice.run(sid, "echo fine")["output"] == "fine\n"


def test_concurrent_sessions(alice):
    sessions = [alice.create_session(name=f"c{i}") for i in range(6)]
    results = {}

    def work(s):
        results[s["id"]] = [alice.run(s["id"], f"echo {s['name']}-{j}")["output"] for j in range(5)]
    threads = [threading.Thread(target=work, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sessions:
        assert results[s["id"]] == [f"{s['name']}-{j}\n" for j in range(5)]
        alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_command_waits_for_a_program_a_person_started(alice, session):
    """A program typed at the terminal (not through the API) holds later API commands back."""
    sid = session["id"]
    alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "sleep 1; echo typed-by-hand\r"})
    deadline = time.monotonic() + 10
    while "typed-by-hand" not in "\n".join(alice.http.get(f"/api/v1/sessions/{sid}/screen/").json()["lines"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
        if "sleep 1" in "\n".join(alice.http.get(f"/api/v1/sessions/{sid}/screen/").json()["lines"]):
            break
    r = alice.run(sid, "echo from-api", wait=20)
    assert (r["status"], r["exit_code"], r["output"]) == ("succeeded", 0, "from-api\n")
