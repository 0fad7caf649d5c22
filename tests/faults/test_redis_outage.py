"""Redis restarted or paused, at vterm's default settings (heartbeat TTL 7 s, reconcile 3 s, pool
start grace 20 s, hand-off check 5 s): docs/failover.md, rows "Redis restarted (AOF)" and
"Redis paused / unreachable".

- While Redis is down every request that needs it answers 503 with Retry-After; a command whose
  hand-off (the RPUSH onto its backend's inbox) failed ends ``interrupted`` with the reason, and
  never runs later (the hand-off check takes only ``queued`` ones); /readyz names Redis.
- A pause longer than the heartbeat TTL declares no backend dead: death is judged from the
  database heartbeat, and sessions stay where they are, in the same shells.

Times are printed (``-s`` shows them), never asserted: the machine is shared.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import pytest

from .harness import FaultStack, PrivateRedis, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TTL, RECONCILE = 7.0, 3.0  # vterm's defaults (vterm_project/settings.py), which this stack keeps


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    r = PrivateRedis(tmp_path_factory.mktemp("faults-redis-outage"))
    r.start()
    yield r
    r.resume()
    r.stop()


@pytest.fixture(scope="module")
def fs(redis, tmp_path_factory):
    # The per-user command rate limit is off here: it is kept in Redis and would refuse every
    # command first (503, no row), so a hand-off could never be the part that fails. It is not
    # what these tests are about; everything else is at vterm's defaults.
    with FaultStack(redis.url, tmp_path_factory.mktemp("faults-redis-outage-stack"), prefix="fro",
                    at_defaults=True, VTERM_COMMAND_RATE=0) as st:
        yield st


def _no_process_died(fs):
    assert all(fs.processes_alive().values()), fs.processes_alive()


def _post(fs, sid: str, command: str) -> tuple:
    """(status or exception name, Retry-After, seconds, body)."""
    t = time.monotonic()
    try:
        r = fs.api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": command}, timeout=30)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
        return r.status_code, r.headers.get("Retry-After"), time.monotonic() - t, body
    except Exception as exc:  # noqa: BLE001 - recorded, asserted on below
        return exc.__class__.__name__, None, time.monotonic() - t, None


def _commands(fs, sid: str) -> list[dict]:
    got, url = [], f"/api/v1/sessions/{sid}/commands/?page_size=200"
    while url:
        page = fs.api.http.get(url).json()
        if isinstance(page, list):
            return page
        got += page["results"]
        url = page.get("next")
    return got


def test_redis_restart_answers_503_meanwhile_and_a_failed_hand_off_ends_interrupted(fs, redis):
    sid = fs.api.create_session()["id"]
    assert fs.api.run(sid, "MARK=same-shell")["status"] == "succeeded"  # not exported: a new shell lacks it
    running = fs.submit(sid, "sleep 2; echo across")
    fs.wait_running(sid, running["id"])

    redis.stop()  # SIGTERM: Redis writes its AOF and exits, as in a restart
    t_down = time.monotonic()
    replies = []
    while time.monotonic() - t_down < 4:  # a few seconds of requests while it is away
        replies.append(_post(fs, sid, f"echo during-{len(replies)}"))
        time.sleep(0.2)
    ready_status, ready = fs.readyz()
    redis.start()
    t_up = time.monotonic()
    def served():
        status, _, _, body = _post(fs, sid, 'echo "$MARK"')
        return status == 201 and body
    first = wait_for(served, 60, "a command accepted again after Redis came back", interval=0.2)
    back_s = time.monotonic() - t_up
    after = fs.api.wait_command(sid, first["id"], timeout=60)
    ended = {c["id"]: c for c in fs.settle([running])}

    print(f"\nRedis down {t_up - t_down:.1f} s: {len(replies)} request(s), answers "
          + ", ".join(f"{s} in {sec:.2f} s" for s, _, sec, _ in replies)
          + f"; commands accepted again {back_s:.1f} s after it was back")

    # Meanwhile: 503 with Retry-After, never a 500 nor a 201; /readyz says Redis is what failed.
    assert replies and all(s == 503 and ra for s, ra, _, _ in replies), replies
    assert ready_status == 503 and ready["failed"] == ["redis"], ready
    assert ready["checks"]["redis"].startswith("error") and ready["checks"]["database"] == "ok", ready

    # Each refused command was recorded, then its hand-off failed: it ended `interrupted` with the
    # reason, and it did not run once Redis was back (the client was told 503, not 201).
    during = {c["command"]: c for c in _commands(fs, sid) if c["command"].startswith("echo during-")}
    print(f"refused commands recorded: {len(during)} of {len(replies)}; reasons: "
          f"{sorted({c['reason'] for c in during.values()})}")
    assert during, "no refused command got as far as its hand-off"
    for c in during.values():
        assert c["status"] == "interrupted", c
        assert c["reason"].startswith("could not be queued: Redis is unavailable"), c
        assert not c["output"], c

    # What was accepted before the restart ended in its shell; the session goes on in the same shell.
    assert (ended[running["id"]]["status"], ended[running["id"]]["output"]) == ("succeeded", "across\n")
    assert (after["status"], after["output"]) == ("succeeded", "same-shell\n"), after
    assert fs.readyz()[0] == 200
    # New sessions are placed again (a Celery publish): answers until one is made are counted.
    answers = []

    def created():
        r = fs.api.http.post("/api/v1/sessions/", json={}, timeout=30)
        answers.append(r.status_code)
        return r.status_code == 201
    wait_for(created, 60, "a session to be created after Redis came back", interval=0.5)
    print(f"session creation after Redis was back: answers {answers}")
    assert set(answers) <= {201, 503}, answers
    _no_process_died(fs)


# Just past the TTL (the reconcile's pool-start grace, which follows a longer gap in its own runs,
# does not cover it), and past the TTL plus a reconcile interval.
@pytest.mark.parametrize("pause_s", [TTL + 1, TTL + RECONCILE + 2], ids=["ttl+1s", "ttl+reconcile+2s"])
def test_redis_pause_longer_than_the_heartbeat_ttl_declares_no_backend_dead(fs, redis, pause_s):
    ids = fs.backend_ids()
    sids = [fs.session_on(b)["id"] for b in ids]
    for sid in sids:
        assert fs.api.run(sid, "MARK=same-shell")["status"] == "succeeded"
    running = fs.submit(sids[0], "sleep 3; echo across")
    fs.wait_running(sids[0], running["id"])

    # Watch the backends in the database (what the reconcile judges death from) all along.
    seen: list[tuple[float, dict]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            with contextlib.suppress(sqlite3.Error):  # a busy database: the next look
                seen.append((time.monotonic(), fs.backends_in_db()))
            stop.wait(0.25)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    # /readyz asked as late in the pause as its Redis ping (5 s timeout) still fails in it.
    ready = []
    asked = threading.Timer(max(1.0, pause_s - 5.5), lambda: ready.append(fs.readyz()))
    redis.pause()
    t_pause = time.monotonic()
    try:
        asked.start()
        time.sleep(pause_s)
    finally:
        redis.resume()
    t_resume = time.monotonic()

    # Until the reconcile has run again after every backend heartbeated again (and a while more):
    # then any stale heartbeat would have been acted on.
    def reconciled_after_fresh_heartbeats():
        fresh = [t for t, b in seen if t > t_resume and all(age < TTL / 2 for _, age in b.values())]
        return fresh and time.monotonic() > fresh[0] + 3 * RECONCILE
    wait_for(reconciled_after_fresh_heartbeats, 90, "fresh heartbeats and reconciles after the pause")
    ended = fs.settle([running])
    stop.set()
    watcher.join(5)

    during = [b for t, b in seen if t_pause <= t <= t_resume]
    oldest = max(age for b in during for _, age in b.values())
    print(f"\nRedis paused {t_resume - t_pause:.1f} s; oldest database heartbeat seen meanwhile "
          f"{oldest:.1f} s (TTL {TTL:g} s); /readyz meanwhile {ready}")

    statuses = {s for _, b in seen for s, _ in b.values()}
    assert statuses == {"healthy"}, [(round(t - t_pause, 1), b) for t, b in seen if any(
        s != "healthy" for s, _ in b.values())]
    # The heartbeats went on in the database while Redis could not answer: a look during the pause
    # found one written after it began, and at no look was a backend's heartbeat older than the
    # TTL, which is what a reconcile would declare it dead for (it cannot run without Redis; once
    # Redis is back after a long gap its start grace would hide a stale heartbeat, so look here).
    for b in ids:
        assert any(t - bs[b][1] > t_pause for t, bs in seen if t_pause <= t <= t_resume), \
            f"no heartbeat of {b} was written while Redis was paused"
    assert oldest < TTL, [(round(t - t_pause, 1), bs) for t, bs in seen if t_pause <= t <= t_resume]
    asked.join(30)
    # Only Redis is named: the backends, heartbeating in the database all along, are not "down".
    assert ready and ready[0][0] == 503 and ready[0][1]["failed"] == ["redis"], ready
    assert ready[0][1]["checks"]["backends_down"] == [], ready

    # Nothing moved: same backends, same shells, and the command across the pause ended in it.
    for sid, b in zip(sids, ids, strict=True):
        s = fs.session(sid)
        assert (s["status"], s["backend"]) == ("active", b), s
        assert fs.api.run(sid, 'echo "$MARK"')["output"] == "same-shell\n"
    assert (ended[0]["status"], ended[0]["output"]) == ("succeeded", "across\n"), ended[0]
    _no_process_died(fs)
