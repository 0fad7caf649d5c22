"""One user cannot stall a backend or a web node for the others (issue 14, items 1-3 and fast screens).

A stack of its own with one backend, so that alice's and bob's sessions share it, as they
did in the reproductions. Each test has bob go past a limit, or do what used to stall
everyone, and checks that alice's work goes on unaffected. No timing is asserted; outcomes
are (a command that has not finished within its ``wait`` is not ``succeeded``), and the
times are printed (`-s`).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import Api, _keep_logs, make_stack
from tests.ws_viewer import Viewer

pytestmark = pytest.mark.integration

PENDING_LIMIT = 150  # above redis-py's pool of 100 connections, which pending waits used to hold each
LIMITS = {
    "VTERM_MAX_PENDING_WAITS_PER_USER": PENDING_LIMIT,
    # A start that is not answered shows as a 201 `initializing` after a minute, never as a quick 400.
    "VTERM_SESSION_START_TIMEOUT": 60,
    "VTERM_BREAKER_FAILURES": 2,
    # Bob's flood below must reach the backend: his byte budget is not what is tested there.
    "VTERM_INPUT_BYTES_BURST": 64 * 1024 * 1024,
}


@pytest.fixture(scope="module")
def fair(redis_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fair")
    st = make_stack(redis_url, tmp, backends=1, prefix="fair", VTERM_REDIS_PREFIX=f"fair{uuid.uuid4().hex[:6]}:",
                    **LIMITS)
    try:
        st.start()
        yield st
    finally:
        st.stop()
        _keep_logs(st, "fair")
        shutil.rmtree(tmp, ignore_errors=True)


def _alice_is_served(alice: Api, sid: str) -> dict:
    """Alice's everyday calls all work: a command with wait, a new session, her screen."""
    figures = {}
    t = time.perf_counter()
    cmd = alice.run(sid, "echo hi", wait=30)
    figures["command ms"] = (time.perf_counter() - t) * 1000
    assert (cmd["status"], cmd["output"]) == ("succeeded", "hi\n"), cmd
    t = time.perf_counter()
    new = alice.create_session()
    figures["create ms"] = (time.perf_counter() - t) * 1000
    assert alice.http.delete(f"/api/v1/sessions/{new['id']}/").status_code == 204
    t = time.perf_counter()
    r = alice.http.get(f"/api/v1/sessions/{sid}/screen/")
    figures["screen ms"] = (time.perf_counter() - t) * 1000
    assert r.status_code == 200, r.text
    return {k: round(v, 1) for k, v in figures.items()}


def test_pending_waits_are_bounded_per_user_and_hold_no_connection_each(fair):
    """Bob holds 150 waits (110 WebSocket `run` frames, 40 REST calls with `wait`) behind a
    `sleep`: more than the web's Redis connection pool (100), which each wait used to hold.
    Alice is served all along; bob's 151st wait is a 429 / `throttled`; once bob lets go,
    every one of his waits answers."""
    alice, bob = Api(fair.url, fair.token("alice-w")), Api(fair.url, fair.token("bob-w"))
    asid, bsid = alice.create_session()["id"], bob.create_session()["id"]
    sleeper = bob.http.post(f"/api/v1/sessions/{bsid}/commands/", json={"command": "sleep 120"}).json()
    ws_runs, rest_waits = 110, PENDING_LIMIT - 110

    v = Viewer(fair.url, bsid, token=bob.token)
    for i in range(ws_runs):
        v.send(type="run", command="true", ref=f"w{i}")
    queued = set()
    while len(queued) < ws_runs:  # each run frame is answered at once with its command, queued
        f = v.until(lambda f: f["type"] == "error" or (f["type"] == "command" and "ref" in f), timeout=60)
        assert f["type"] == "command", f
        queued.add(f["ref"])

    answers: list[httpx.Response] = []

    def wait_rest():
        with httpx.Client(base_url=fair.url, headers={"Authorization": f"Bearer {bob.token}"}, timeout=90) as c:
            answers.append(c.post(f"/api/v1/sessions/{bsid}/commands/", json={"command": "true", "wait": 60}))
    threads = [threading.Thread(target=wait_rest) for _ in range(rest_waits)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while bob.http.get(f"/api/v1/sessions/{bsid}/").json()["command_count"] < 1 + ws_runs + rest_waits:
        assert time.monotonic() < deadline, "bob's REST waits were not all submitted"
        time.sleep(0.1)
    assert answers == [], "bob's waits are all pending behind his sleep"

    figures = _alice_is_served(alice, asid)

    # Bob is at his limit: one more wait is refused, on either road; nothing was created for it.
    r = bob.http.post(f"/api/v1/sessions/{bsid}/commands/", json={"command": "true", "wait": 5})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text
    assert "awaiting their results" in r.json()["detail"] and str(PENDING_LIMIT) in r.json()["detail"]
    v.send(type="run", command="true", ref="over")
    err = v.until(lambda f: f["type"] == "error", timeout=30)
    assert err["code"] == "throttled" and "awaiting their results" in err["message"], err
    # Without a wait bob can still submit (his command budget is another limit).
    assert bob.http.post(f"/api/v1/sessions/{bsid}/commands/", json={"command": "true"}).status_code == 201
    assert bob.http.get(f"/api/v1/sessions/{bsid}/").json()["command_count"] == 2 + ws_runs + rest_waits

    # Bob lets go: his sleep ends and every wait he held gets its answer.
    assert bob.http.post(f"/api/v1/sessions/{bsid}/commands/{sleeper['id']}/interrupt/").status_code == 202
    for t in threads:
        t.join(90)
    assert len(answers) == rest_waits
    assert {(a.status_code, a.json()["status"]) for a in answers} == {(201, "succeeded")}
    done = {f["ref"] for f in v.frames if f["type"] == "command" and f["command"]["status"] == "succeeded"}
    while len(done & queued) < ws_runs:
        f = v.until(lambda f: f["type"] == "command" and f["command"]["status"] == "succeeded", timeout=60)
        done.add(f.get("ref"))
    v.close()
    # ... and his waits are his again.
    assert bob.run(bsid, "echo again", wait=30)["output"] == "again\n"
    print(f"\n[fairness] alice with bob holding {PENDING_LIMIT} waits: {figures}")
    for api, sid in ((alice, asid), (bob, bsid)):
        api.http.delete(f"/api/v1/sessions/{sid}/")


def _fifo_in_home(api: Api, sid: str) -> str:
    """A FIFO in the user's home that no one writes: a shell with it as HISTFILE waits for ever
    to read its history, before its first prompt."""
    made = api.run(sid, 'f="$HOME/vterm-fair-history.fifo"; rm -f "$f"; mkfifo "$f" && echo "$f"')
    assert made["status"] == "succeeded", made
    return made["output"].strip()


def test_a_start_failing_because_of_its_request_is_a_fast_400_and_trips_no_breaker(fair):
    """Bob asks for shells that cannot start because of what he asked: three at a time and twice
    PATH=/nonexistent (where bash is looked up on PATH: it is not found, and the shell exits as it
    starts), twice a HISTFILE that blocks bash before its first prompt, and directories that are
    not there. Each is a 400 naming the cause, at once (the start timeout is a minute here) or after
    the driver's own 10 s; and the backend's breaker, which two failures open here, stays closed:
    alice and bob still get sessions on it."""
    alice, bob = Api(fair.url, fair.token("alice-s")), Api(fair.url, fair.token("bob-s"))
    bsid = bob.create_session()["id"]
    answers: dict[str, list[tuple[int, str, float]]] = {"PATH": [], "HISTFILE": []}

    def create(name, value):
        t = time.perf_counter()
        r = bob.http.post("/api/v1/sessions/", json={"env": {name: value}})
        answers[name].append((r.status_code, r.text, time.perf_counter() - t))
        if r.status_code == 201:  # a launch that does not look bash up on PATH starts it anyway
            assert r.json()["status"] == "active", r.text
            bob.http.delete(f"/api/v1/sessions/{r.json()['id']}/")

    def in_parallel(n, name, value):
        threads = [threading.Thread(target=create, args=(name, value)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)

    for _ in range(2):
        in_parallel(3, "PATH", "/nonexistent")
    fifo = _fifo_in_home(bob, bsid)
    try:
        hung = threading.Thread(target=in_parallel, args=(2, "HISTFILE", fifo))
        hung.start()
        time.sleep(1)
        # While bob's two starts hang on the backend, alice's start there is not queued behind them.
        t = time.perf_counter()
        s = alice.create_session()
        alice_ms = (time.perf_counter() - t) * 1000
        assert s["status"] == "active" and not answers["HISTFILE"], (s, answers["HISTFILE"])
        alice.http.delete(f"/api/v1/sessions/{s['id']}/")
        hung.join(120)
    finally:
        bob.run(bsid, f"rm -f '{fifo}'")
    print(f"\n[fairness] alice's start beside bob's hanging ones: {alice_ms:.0f} ms")
    for status, text, _ in answers["PATH"]:
        assert status in (400, 201), text
        if status == 400:
            assert '"env"' in text and "PATH='/nonexistent' has no bash" in text, text
    assert len(answers["HISTFILE"]) == 2
    for status, text, _ in answers["HISTFILE"]:
        assert status == 400 and '"env"' in text and "did not start in time" in text, text

    with tempfile.NamedTemporaryFile() as not_a_dir:
        for cwd in ("/nonexistent/dir", not_a_dir.name):
            r = bob.http.post("/api/v1/sessions/", json={"cwd": cwd})
            assert r.status_code == 400 and '"cwd"' in r.text and cwd in r.text, r.text

    # The breaker counts the backend's own failures only: this one backend still takes sessions.
    for api in (alice, bob):
        s = api.create_session()
        assert s["status"] == "active"
        api.http.delete(f"/api/v1/sessions/{s['id']}/")
    bob.http.delete(f"/api/v1/sessions/{bsid}/")
    print("\n[fairness] bob's failing starts (status, ms): "
          + "; ".join(f"{k}: {[(c, round(d * 1000)) for c, _, d in v]}" for k, v in answers.items()))


def test_one_sessions_input_flood_does_not_hold_up_another_sessions_command(fair):
    """Bob floods his session with 300 input frames of 64,000 characters (19 MB): alice's
    `echo hi` on the same backend is served in its turn, not behind bob's backlog."""
    alice, bob = Api(fair.url, fair.token("alice-f")), Api(fair.url, fair.token("bob-f"))
    asid, bsid = alice.create_session()["id"], bob.create_session()["id"]
    assert alice.http.get(f"/api/v1/sessions/{asid}/").json()["backend"] == \
        bob.http.get(f"/api/v1/sessions/{bsid}/").json()["backend"]
    bob.http.post(f"/api/v1/sessions/{bsid}/commands/", json={"command": "cat > /dev/null"})
    v = Viewer(fair.url, bsid, token=bob.token, ack=False)
    line = "x" * 63_999 + "\n"
    for _ in range(300):
        v.send(type="input", data=line)
    v.send(type="ping")  # frames are handled in order: at the pong, all 300 are on the backend's inbox
    v.until(lambda f: f["type"] == "pong", timeout=120)
    assert not [f for f in v.frames if f["type"] == "error"], "bob's flood was within his budgets"

    t = time.perf_counter()
    r = alice.http.post(f"/api/v1/sessions/{asid}/commands/", json={"command": "echo hi", "wait": 10})
    latency = (time.perf_counter() - t) * 1000
    assert r.status_code == 201, r.text
    assert (r.json()["status"], r.json()["output"]) == ("succeeded", "hi\n"), r.json()
    print(f"\n[fairness] alice's echo hi behind bob's 300 x 64,000-character input frames: {latency:.0f} ms")
    v.close()
    for api, sid in ((alice, asid), (bob, bsid)):
        api.http.delete(f"/api/v1/sessions/{sid}/")


def test_screens_are_not_queued_behind_the_backends_celery_work(fair):
    """Bob holds the backend's Celery worker for ten seconds with a session start that cannot
    finish (HISTFILE is a FIFO in his home that no one writes: bash waits to read it before its
    first prompt). Alice's screen does not wait for it."""
    alice, bob = Api(fair.url, fair.token("alice-c")), Api(fair.url, fair.token("bob-c"))
    asid, bsid = alice.create_session()["id"], bob.create_session()["id"]
    fifo = _fifo_in_home(bob, bsid)
    started: list[httpx.Response] = []
    hold = threading.Thread(target=lambda: started.append(
        bob.http.post("/api/v1/sessions/", json={"env": {"HISTFILE": fifo}})))
    try:
        hold.start()
        time.sleep(1)  # the start task is on the worker by now (if not, the screens below prove less)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            r = alice.http.get(f"/api/v1/sessions/{asid}/screen/")
            times.append(round((time.perf_counter() - t) * 1000))
            assert r.status_code == 200, r.text
            time.sleep(0.5)
        hold.join(60)
        assert len(started) == 1, "bob's start was answered"
        assert started[0].status_code == 400 and "did not start in time" in started[0].text, started[0].text
    finally:
        hold.join(60)
        bob.run(bsid, f"rm -f '{fifo}'")
    print(f"\n[fairness] alice's screens while bob's start held the backend's Celery worker: {times} ms")
    for api, sid in ((alice, asid), (bob, bsid)):
        api.http.delete(f"/api/v1/sessions/{sid}/")
