"""The retention purge on a live stack: run by Celery beat on the control worker (the maintenance
queue), through the same processes `make run` starts, against the stack's SQLite file; and the
stores' sizes in /metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests import prom
from tests.conftest import Api, control_stack

pytestmark = pytest.mark.integration

KEEP = 5  # VTERM_RETENTION_COMMANDS
DEADLINE = 90  # seconds to wait for beat's runs; a bound, not an assertion on time

# Ages one ended session past retention and some audit rows past theirs, in the stack's database.
AGE = """
import json
from datetime import timedelta
from django.utils import timezone
from sessions.models import AuditEvent, SessionEvent, TerminalSession
old = timezone.now() - timedelta(days={days})
TerminalSession.objects.filter(pk="{session}").update(created_at=old, terminated_at=old)
audit = list(AuditEvent.objects.filter(session_id="{session}").values_list("pk", flat=True))
AuditEvent.objects.filter(pk__in=audit).update(at=timezone.now() - timedelta(days={audit_days}))
print(json.dumps({{"events": SessionEvent.objects.filter(session_id="{session}").count(), "audit": len(audit)}}))
"""

STATE = """
import json
from sessions.models import AuditEvent, Command, TerminalSession
print(json.dumps({
    "sessions": sorted(str(s) for s in TerminalSession.objects.values_list("pk", flat=True)),
    "commands": {str(s): sorted(q for q in Command.objects.filter(session_id=s).values_list("seq", flat=True))
                 for s in TerminalSession.objects.values_list("pk", flat=True)},
    "audit_sessions": sorted({str(s) for s in AuditEvent.objects.values_list("session_id", flat=True) if s}),
}))
"""


def _json(st, code: str) -> dict:
    return json.loads(st.config.manage("shell", "-c", code).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def rstack(redis_url, tmp_path_factory):
    # The purge runs from beat, on the control worker.
    with control_stack(redis_url, tmp_path_factory.mktemp("retention-stack"), "rt",
                       VTERM_RETENTION_INTERVAL=1, VTERM_RETENTION_COMMANDS=KEEP, VTERM_RETENTION_BATCH_SIZE=2,
                       VTERM_RETENTION_BATCH_PAUSE=0, VTERM_RETENTION_SESSIONS_DAYS=30,
                       VTERM_RETENTION_AUDIT_DAYS=180) as st:
        yield st


def _wait(what: str, predicate):
    deadline = time.monotonic() + DEADLINE
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {DEADLINE} s: {what}"
        time.sleep(0.5)


def _poll(read, done):
    """Read until ``done(value)`` or the deadline; the last value either way, for the test's asserts."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def _run(api: Api, sid: str, n: int) -> None:
    for i in range(n):
        assert api.run(sid, f"echo {i}")["status"] == "succeeded"


def _end(api: Api, sid: str) -> None:
    assert api.http.delete(f"/api/v1/sessions/{sid}/").status_code in (200, 202, 204)
    _wait("the session ended", lambda: api.http.get(f"/api/v1/sessions/{sid}/").json()["status"] == "terminated")


def test_beat_purges_what_is_past_retention_and_keeps_the_rest(rstack):
    st = rstack
    api = Api(st.url, st.token("retention"))
    old, live, recent = (api.create_session(name=n)["id"] for n in ("old", "live", "recent"))
    for sid in (old, live, recent):
        _run(api, sid, KEEP + 3)
    _end(api, old)
    _end(api, recent)

    # Every session keeps its last KEEP commands, live ones too (the purge trims them as it runs).
    def trimmed():
        state = _json(st, STATE)
        return state if all(state["commands"][s] == list(range(4, KEEP + 4)) for s in (old, live, recent)) else None
    _wait("commands over the cap removed", trimmed)
    listed = api.http.get(f"/api/v1/sessions/{live}/commands/").json()
    assert [c["seq"] for c in listed["results"]] == list(range(4, KEEP + 4))

    aged = _json(st, AGE.format(days=31, session=old, audit_days=181))
    assert aged["audit"] >= KEEP + 3 + 2  # its creation, every command, its end

    # A run deletes sessions, then commands over the cap, then audit events: wait for all of it.
    state = _poll(lambda: _json(st, STATE), lambda s: s["audit_sessions"] == sorted([live, recent]))
    assert state["sessions"] == sorted([live, recent])
    assert state["commands"] == {live: list(range(4, KEEP + 4)), recent: list(range(4, KEEP + 4))}
    assert state["audit_sessions"] == sorted([live, recent])  # the old one's audit rows aged out too
    assert api.http.get(f"/api/v1/sessions/{old}/").status_code == 404

    # Counted in /metrics: exactly what went, by kind (counters only grow: wait, then compare).
    expected = {"sessions": 1, "commands": 3 * 3 + KEEP, "session_events": aged["events"],
                "audit_events": aged["audit"]}

    def deleted(series) -> dict:
        return {k: prom.value(series, "vterm_retention_deleted_total", kind=k) for k in expected}
    series = _poll(lambda: prom.scrape(st.url), lambda s: deleted(s) == expected)
    assert deleted(series) == expected
    assert prom.value(series, "vterm_retention_last_run_timestamp_seconds") > time.time() - DEADLINE
    # Last: a new command makes the cap trim one more.
    assert api.run(live, "echo still here")["output"] == "still here\n"


def test_metrics_show_the_database_and_redis_sizes(rstack, redis_url):
    st = rstack
    db = Path(st.config.data_dir) / "vterm.sqlite3"
    wal = db.with_name(db.name + "-wal")
    # The file and its WAL only grow (SQLite reuses the WAL, it does not shrink it), so the size
    # scraped lies between the main file before and file plus WAL after, however the stack writes.
    file_before = db.stat().st_size
    series = prom.scrape(st.url)
    size = prom.value(series, "vterm_database_size_bytes")
    assert file_before <= size <= db.stat().st_size + wal.stat().st_size
    fs_size = prom.value(series, "vterm_database_filesystem_size_bytes")
    fs_free = prom.value(series, "vterm_database_filesystem_free_bytes")
    assert 0 < fs_free < fs_size
    info = redis.Redis.from_url(redis_url).info("memory")
    assert prom.value(series, "vterm_redis_memory_max_bytes") == info["maxmemory"]
    assert prom.value(series, "vterm_redis_memory_system_bytes") == info["total_system_memory"]
    assert prom.value(series, "vterm_redis_memory_used_bytes") > 0
