"""GET /api/v1/backends/, GET /api/v1/pool/ and the vterm series on /metrics, on the live stack."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import Api
from tests.prom import scrape, value

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ops(stack) -> Api:
    return Api(stack.url, stack.token("ops", staff=True))


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_pool_endpoints_are_for_staff_only(stack, alice):
    for path in ("/api/v1/backends/", "/api/v1/pool/"):
        assert httpx.get(stack.url + path).status_code == 401
        assert alice.http.get(path).status_code == 403


def test_backends_list_each_backend_with_its_load(ops, alice, stack):
    s = alice.create_session(name="pool-load")
    backends = {b["id"]: b for b in ops.http.get("/api/v1/backends/").json()}
    assert set(stack.config.backend_ids()) <= set(backends)
    for b in backends.values():
        assert {"id", "hostname", "queue", "status", "capacity", "sessions", "last_heartbeat"} <= set(b)
        assert b["queue"] == f"backend.{b['id']}" and b["status"] == "healthy" and b["capacity"] > 0
    mine = backends[s["backend"]]
    assert mine["sessions"] >= 1
    # Memory and CPU arrive with the heartbeat's stats (every VTERM_STATS_INTERVAL).
    def stats():
        b = next(x for x in ops.http.get("/api/v1/backends/").json() if x["id"] == s["backend"])
        return b if b["memory_ratio"] is not None else None
    b = wait_for(stats, what="backend stats")
    assert 0 < b["memory_ratio"] < 1 and b["memory_bytes"] > 0 and b["processes"] >= 2
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_a_sessions_processes_count_in_its_backends_stats(ops, alice):
    """The backend's figures include every process of its sessions: sandboxed, as the sessions' own
    cgroups count them (the resource sampler's round, workers/backend_stats.py), detached ones too."""
    s = alice.create_session(name="pool-procs")

    def processes():
        b = next(x for x in ops.http.get("/api/v1/backends/").json() if x["id"] == s["backend"])
        return b["processes"]
    wait_for(processes, what="backend stats")

    def settled():
        # The same count over a whole sampling round (5 s): the earlier tests' sessions, ended, are out of it.
        first = processes()
        time.sleep(6)
        return first if processes() == first else None
    before = wait_for(settled, timeout=60, what="the backend's process count to settle")
    alice.run(s["id"], "for i in 1 2 3 4 5 6; do setsid sleep 300 & done", wait=10)
    # Five more of the six, in case another shell ends meanwhile.
    wait_for(lambda: processes() >= before + 5 or None, what="the session's six sleeps in its backend's stats")
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_pool_summary(ops, alice):
    s = alice.create_session(name="pool-summary")
    pool = ops.http.get("/api/v1/pool/").json()
    backends = ops.http.get("/api/v1/backends/").json()
    healthy = [b for b in backends if b["status"] == "healthy"]
    assert pool["active_backends"] == len(healthy)
    assert pool["capacity"] == sum(b["capacity"] for b in healthy)
    assert pool["available_slots"] == pool["capacity"] - sum(b["sessions"] for b in healthy)
    m = pool["metrics"]
    assert set(m) == {"total_sessions", "average_load", "memory_usage", "cpu_usage", "error_rate"}
    assert m["total_sessions"] >= 1 and m["average_load"] == pytest.approx(m["total_sessions"] / pool["capacity"],
                                                                            abs=1e-3)
    assert {"action", "target_capacity", "reason", "confidence"} <= set(pool["scaling"])
    assert pool["scaling"]["action"] in ("scale_up", "scale_down", "maintain")
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_metrics_count_what_happens(stack, alice, session):
    before = scrape(stack.url)
    alice.run(session["id"], "printf 'x%.0s' {1..1000}")
    failed = alice.run(session["id"], "false")
    assert failed["status"] == "failed"
    after = wait_for(lambda: (m := scrape(stack.url)) and
                     value(m, "vterm_commands_total", status="failed") > value(before, "vterm_commands_total",
                                                                             status="failed") and m,
                     what="the command counters")
    assert value(after, "vterm_commands_total", status="succeeded") >= value(
        before, "vterm_commands_total", status="succeeded") + 1
    assert value(after, "vterm_command_latency_seconds_count") >= value(before, "vterm_command_latency_seconds_count") + 2
    assert value(after, "vterm_command_latency_seconds_bucket", le="+Inf") == value(
        after, "vterm_command_latency_seconds_count")
    backend = session["backend"]
    assert value(after, "vterm_output_bytes_total", backend=backend) >= value(
        before, "vterm_output_bytes_total", backend=backend) + 1000
    assert value(after, "vterm_session_create_seconds_count") >= 1
    assert value(after, "vterm_sessions", status="active", backend=backend) >= 1
    for bid in stack.config.backend_ids():
        assert 0 <= value(after, "vterm_backend_heartbeat_age_seconds", backend=bid) < 30
    assert value(after, "vterm_backends", status="healthy") >= 2
    assert value(after, "vterm_pool_capacity") > 0 and value(after, "vterm_pool_desired_backends") >= 2
    assert "vterm_autoscaler_decision" in after and "vterm_websocket_connections" in after
    # django-prometheus' own series are still there.
    assert "django_http_requests_total_by_method_total" in after


def test_admin_backends_page_shows_the_pool(stack, ops):
    code = ("from django.contrib.auth import get_user_model; U=get_user_model(); "
            "u,_=U.objects.get_or_create(username='pool-admin'); u.is_staff=u.is_superuser=True; "
            "u.set_password('pool-admin-pw-1'); u.save()")
    stack.config.manage("shell", "-c", code)
    with httpx.Client(base_url=stack.url, timeout=30, follow_redirects=True) as browser:
        browser.get("/admin/login/")
        r = browser.post("/admin/login/?next=/admin/vterm_sessions/backend/", data={
            "username": "pool-admin", "password": "pool-admin-pw-1", "next": "/admin/vterm_sessions/backend/",
            "csrfmiddlewaretoken": browser.cookies["csrftoken"]}, headers={"Referer": stack.url + "/admin/login/"})
        assert r.status_code == 200 and 'id="vterm-pool-summary"' in r.text, r.text[:2000]
    pool = ops.http.get("/api/v1/pool/").json()
    assert f"<td>{pool['capacity']}</td><td>{pool['active_backends']}</td>" in r.text
    for bid in stack.config.backend_ids():
        assert f'<tr class="vterm-backend"><td>{bid}</td><td>healthy</td>' in r.text


def test_websocket_connections_gauge(stack, alice, session):
    from tests.ws_viewer import Viewer

    before = value(scrape(stack.url), "vterm_websocket_connections")
    opened = value(scrape(stack.url), "vterm_websocket_connections_opened_total")
    viewer = Viewer(stack.url, session["id"], token=alice.token)
    assert viewer.hello["type"] == "hello"
    now = scrape(stack.url)
    assert value(now, "vterm_websocket_connections") == before + 1
    assert value(now, "vterm_websocket_connections_opened_total") == opened + 1
    viewer.ws.close()
    wait_for(lambda: value(scrape(stack.url), "vterm_websocket_connections") == before, what="the gauge to drop")
