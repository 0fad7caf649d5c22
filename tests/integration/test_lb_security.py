"""The shipped HAProxy config (deploy/haproxy/haproxy.cfg) in front of two Daphne nodes run as
docker-compose.yml runs them (--proxy-headers): paths are matched as the web nodes read them,
and the client address the web tier keys on is the one the balancer saw (issue 14, item 7).

Clients come from different loopback addresses (127.0.0.2 is mallory, 127.0.0.3 alice), as
different machines would, and mallory forges X-Forwarded-For on every request.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import uuid

import httpx
import pytest

from tests.conftest import ARTIFACTS, Api
from tests.integration.test_lb_failover import HAPROXY_CFG, wait_for, web_proc
from tests.ws_viewer import ws_url
from vterm_project.devstack import Stack, StackConfig, free_port

pytestmark = pytest.mark.integration

MALLORY, ALICE = "127.0.0.2", "127.0.0.3"
FORGED = {"X-Forwarded-For": "10.66.66.66", "X-Forwarded-Port": "1", "X-Real-IP": "10.66.66.66"}


@pytest.fixture(scope="module")
def lb(redis_url, tmp_path_factory):
    binary = shutil.which("haproxy")
    if not binary:
        pytest.skip("haproxy is not installed (Debian package haproxy; `make test-deps`)")
    tmp = tmp_path_factory.mktemp("lbsec")
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=1, redis_url=redis_url, flower_port=None,
                      beat=False, backend_prefix="lbs",
                      extra_env={"SECRET_KEY": "test-secret-key-not-for-shells", "VTERM_HEARTBEAT_INTERVAL": "1",
                                 "VTERM_REDIS_PREFIX": f"lbs{uuid.uuid4().hex[:6]}:",
                                 "VTERM_LOGIN_MAX_FAILURES": "3", "VTERM_LOGIN_WINDOW": "120"})
    st = Stack(cfg)
    haproxy = None
    try:
        st.start()
        # Both web nodes as the deployment runs them: behind the balancer, with --proxy-headers.
        st.stop_process("web")
        web2_port = free_port()
        for name, port in (("web", cfg.port), ("web2", web2_port)):
            st.start_process(web_proc(name, port))
            wait_for(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz").status_code == 200, 60, name)
        lb_port = free_port()
        env = {**os.environ, "VTERM_WEB1": f"127.0.0.1:{cfg.port}", "VTERM_WEB2": f"127.0.0.1:{web2_port}",
               "VTERM_LB_HTTP": f"127.0.0.1:{lb_port}", "VTERM_LB_STATS": f"127.0.0.1:{free_port()}"}
        log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 (closed with the process)
        haproxy = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{lb_port}"
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "HAProxy")
        yield st, url, lb_port
    finally:
        if haproxy:
            haproxy.terminate()
            haproxy.wait(10)
        st.stop()
        dest = ARTIFACTS / "logs" / "lbsec"
        dest.mkdir(parents=True, exist_ok=True)
        for f in [*st.log_dir.glob("*.log"), tmp / "haproxy.log"]:
            if f.exists():
                shutil.copy(f, dest / f.name)


def _raw_get(port: int, path: str, source: str = MALLORY) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (http.client does not normalise it)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    conn.request("GET", path, headers={"Host": "localhost"})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, body


def _client(url: str, source: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, headers={"Referer": url + "/", **FORGED},
                        transport=httpx.HTTPTransport(local_address=source))


def _login(url: str, source: str, username: str, password: str) -> httpx.Response:
    web = _client(url, source)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', web.get("/login/").text).group(1)
    return web.post("/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token})


def test_metrics_is_refused_however_its_path_is_spelled(lb):
    st, _, lb_port = lb
    spellings = ["/metrics", "/%6detrics", "/%6D%65trics", "/METRICS", "//metrics", "/%2fmetrics", "/metrics/",
                 "/metrics?x=1"]
    dot_segments = ["/static/../metrics", "/./metrics", "/static/%2e%2e/metrics", "/api/%2E%2E/metrics"]
    # Straight to a web node (from loopback, an allowed network), some spellings do reach /metrics:
    # what the balancer must stop.
    status, body = _raw_get(st.config.port, "/%6detrics")
    assert status == 200 and b"# HELP" in body
    for path in spellings:
        status, body = _raw_get(lb_port, path)
        assert status == 403 and b"# HELP" not in body, (path, status)
    for path in dot_segments:
        status, body = _raw_get(lb_port, path)
        assert status == 400 and b"# HELP" not in body, (path, status)
    # Everything else still goes through.
    assert _raw_get(lb_port, "/readyz")[0] == 200
    assert _raw_get(lb_port, "/static/vterm/terminal.js")[0] == 200


def test_login_throttling_and_the_audit_key_on_the_address_the_balancer_saw(lb):
    st, url, _ = lb
    st.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g\n"
                     "u,_=g().objects.get_or_create(username='lbalice'); u.set_password('lbalice-pass-1'); u.save()")
    # mallory guesses alice's password through the balancer, forging X-Forwarded-For each time.
    for _ in range(3):
        assert _login(url, MALLORY, "lbalice", "wrong").status_code == 200  # the form again, with an error
    r = _login(url, MALLORY, "lbalice", "lbalice-pass-1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, "mallory's own address is locked out"
    # alice, from her own address, through the same balancer, is not locked out of her account.
    r = _login(url, ALICE, "lbalice", "lbalice-pass-1")
    assert r.status_code == 302, r.text
    throttled = [json.loads(line) for line in
                 st.config.manage("vterm_audit_export", "--action", "auth.login_throttled").stdout.splitlines()]
    assert [e["remote_addr"] for e in throttled] == [MALLORY]
    # What alice does through the balancer is audited with her address, REST and WebSocket alike.
    api = Api(url, st.token("lbalice"))
    api.http = _client(url, ALICE)
    api.http.headers["Authorization"] = f"Bearer {api.token}"
    sid = api.create_session(name="via-lb")["id"]
    from websockets.sync.client import connect

    with connect(ws_url(url, sid), additional_headers={"Authorization": f"Bearer {api.token}", **FORGED},
                 source_address=(ALICE, 0), open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "hello"
    api.http.delete(f"/api/v1/sessions/{sid}/")
    events = [json.loads(line) for line in
              st.config.manage("vterm_audit_export", "--session", sid).stdout.splitlines()]
    by_action = {e["action"]: e["remote_addr"] for e in events}
    assert by_action["session.create"] == ALICE and by_action["session.attach"] == ALICE, events
    assert by_action["session.terminate"] == ALICE
    assert "10.66.66.66" not in json.dumps(events + throttled)
