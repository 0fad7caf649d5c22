"""The autoscaler end to end: beat decides, the local scaler starts a backend that takes sessions,
and on scale-down drains it (its session moves, alive) before stopping and retiring it.

Its own stack (private Redis, beat, the local scaler) with tiny backends (2 sessions each) and a
1-second autoscaler, so that a handful of sessions is load enough.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ARTIFACTS, Api
from tests.prom import scrape, value
from vterm_project.devstack import Stack, StackConfig, free_port

pytestmark = pytest.mark.integration

TOKEN = "metrics-test-token"


@pytest.fixture(scope="module")
def scaling_stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("autoscale")
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=2, redis_port=free_port(), flower_port=None,
                      beat=True, scaler=True, backend_prefix="asl", extra_env={
                          "SECRET_KEY": "test-secret-key-not-for-shells",
                          "VTERM_BACKEND_CAPACITY": "2", "VTERM_POOL_MAX_BACKENDS": "3",
                          "VTERM_AUTOSCALE_INTERVAL": "1", "VTERM_AUTOSCALE_UP_AFTER": "1",
                          "VTERM_AUTOSCALE_DOWN_AFTER": "2", "VTERM_AUTOSCALE_COOLDOWN": "2",
                          # A loaded test machine is slow: scale on sessions only here.
                          "VTERM_AUTOSCALE_LATENCY_P99": "1000", "VTERM_AUTOSCALE_ERROR_RATE": "1",
                          "VTERM_HEARTBEAT_INTERVAL": "1", "VTERM_STATS_INTERVAL": "1",
                          "VTERM_METRICS_TOKEN": TOKEN, "VTERM_METRICS_ALLOW_NETWORKS": "192.0.2.0/24",
                      })
    st = Stack(cfg)
    try:
        st.start()
        yield st
    finally:
        st.stop()
        dest = ARTIFACTS / "logs" / "autoscale"
        dest.mkdir(parents=True, exist_ok=True)
        for f in st.log_dir.glob("*.log"):
            (dest / f.name).write_bytes(f.read_bytes())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def desired_from_metrics(url: str) -> float:
    series = scrape(url, headers={"Authorization": f"Bearer {TOKEN}"})
    assert "vterm_pool_desired_backends" in series, "no vterm_pool_desired_backends"
    return value(series, "vterm_pool_desired_backends")


def test_metrics_need_the_token_outside_the_allowed_networks(scaling_stack):
    # 127.0.0.1 is outside 192.0.2.0/24 here.
    assert httpx.get(scaling_stack.url + "/metrics").status_code == 403
    assert httpx.get(scaling_stack.url + "/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert desired_from_metrics(scaling_stack.url) >= 2


def test_scale_up_then_drain_and_scale_down(scaling_stack):
    st = scaling_stack
    user = Api(st.url, st.token("load"))
    ops = Api(st.url, st.token("ops", staff=True))

    def backends() -> dict[str, dict]:
        return {b["id"]: b for b in ops.http.get("/api/v1/backends/").json()}

    # 4 sessions on 2 backends of 2: full. The autoscaler asks for a third, the scaler starts it.
    filler = [user.create_session()["id"] for _ in range(4)]
    pool = wait_for(lambda: (p := ops.http.get("/api/v1/pool/").json())["scaling"]["target_backends"] == 3 and p,
                    60, "a scale_up decision")
    assert pool["scaling"]["target_capacity"] == 6
    assert desired_from_metrics(st.url) == 3
    wait_for(lambda: backends().get("asl-3", {}).get("status") == "healthy", 120, "backend asl-3 to start")

    # The new backend takes sessions at once: it is the only one with room.
    moved = user.create_session(cwd="/tmp")
    assert moved["backend"] == "asl-3"
    assert user.run(moved["id"], "cd /var && echo here")["output"] == "here\n"

    # Load drops: one backend is drained (its session moves, alive), stopped and retired.
    for sid in filler:
        assert user.http.delete(f"/api/v1/sessions/{sid}/").status_code == 204
    wait_for(lambda: set(backends()) == {"asl-1", "asl-2"}, 120, "asl-3 to be drained and retired")
    session = user.http.get(f"/api/v1/sessions/{moved['id']}/").json()
    assert session["status"] == "active" and session["backend"] in ("asl-1", "asl-2")
    after = user.run(moved["id"], "pwd")
    assert after["status"] == "succeeded" and after["output"] == "/var\n"
    pool = ops.http.get("/api/v1/pool/").json()
    assert pool["active_backends"] == 2 and pool["scaling"]["target_backends"] == 2
