"""HAProxy (deploy/haproxy/haproxy.cfg) in front of two real web processes: a WebSocket terminal
keeps going, with no lost or repeated output, while each web process in turn is restarted.

The viewer reconnects through the load balancer with ?since=SEQ when its node goes away
(docs/deploy.md, "Load balancer and TLS"); HTTP requests through the balancer go on meanwhile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ARTIFACTS, Api
from tests.ws_viewer import Viewer
from vterm_project.devstack import BIN, Proc, Stack, StackConfig, free_port

pytestmark = pytest.mark.integration

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = predicate()
        except (httpx.HTTPError, OSError):
            got = None
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def web_proc(name: str, port: int) -> Proc:
    # As docker-compose.yml runs them behind the balancer: the client address from its X-Forwarded-For.
    return Proc(name, [str(BIN / "daphne"), "--proxy-headers", "-b", "127.0.0.1", "-p", str(port),
                       "vterm_project.asgi:application"])


@pytest.fixture(scope="module")
def lb(tmp_path_factory):
    binary = shutil.which("haproxy")
    if not binary:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    tmp = tmp_path_factory.mktemp("lb")
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=1, redis_port=free_port(), flower_port=None,
                      beat=False, backend_prefix="lbt",
                      extra_env={"SECRET_KEY": "test-secret-key-not-for-shells", "VTERM_HEARTBEAT_INTERVAL": "1"})
    st = Stack(cfg)
    haproxy = None
    try:
        st.start()
        web2_port = free_port()
        st.start_process(web_proc("web2", web2_port))
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{web2_port}/readyz").status_code == 200, 60, "web2")
        lb_port = free_port()
        env = {**os.environ, "VTERM_WEB1": f"127.0.0.1:{cfg.port}", "VTERM_WEB2": f"127.0.0.1:{web2_port}",
               "VTERM_LB_HTTP": f"127.0.0.1:{lb_port}", "VTERM_LB_STATS": f"127.0.0.1:{free_port()}"}
        log = open(tmp / "haproxy.log", "wb")  # noqa: SIM115 (closed with the process)
        haproxy = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{lb_port}"
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200, 30, "HAProxy")
        yield st, url, {"web": cfg.port, "web2": web2_port}
    finally:
        if haproxy:
            haproxy.terminate()
            haproxy.wait(10)
        st.stop()
        dest = ARTIFACTS / "logs" / "lb"
        dest.mkdir(parents=True, exist_ok=True)
        for f in [*st.log_dir.glob("*.log"), tmp / "haproxy.log"]:
            if f.exists():
                shutil.copy(f, dest / f.name)


class ReconnectingViewer:
    """A terminal viewer through the balancer that resumes with ?since=SEQ when its node goes."""

    def __init__(self, url: str, session_id: str, token: str) -> None:
        self.url, self.session_id, self.token = url, session_id, token
        self.viewer = Viewer(url, session_id, token=token)
        # Output of the connections before this one. The viewer records a frame before it acks
        # it, so a frame whose ack hit the closed socket is kept too.
        self.earlier: list[tuple[int, str]] = []
        self.breaks: list[str] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self.viewer.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    self._resume()
                    continue
        except Exception as exc:  # noqa: BLE001 (reported by the test)
            self.error = exc

    @property
    def outputs(self) -> list[tuple[int, str]]:
        return self.earlier + self.viewer.outputs

    def _resume(self) -> None:
        self.breaks += self.viewer.breaks
        self.earlier += self.viewer.outputs
        since = self.viewer.position
        deadline = time.monotonic() + 60
        while True:
            try:
                self.viewer = Viewer(self.url, self.session_id, token=self.token, since=since)
                self.reconnects += 1
                return
            except (OSError, InvalidStatus, ConnectionClosed, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def text(self) -> str:
        return "".join(d for _, d in self.outputs)


def test_websocket_survives_a_rolling_restart_of_the_web_nodes(lb):
    st, url, ports = lb
    api = Api(url, st.token("lb-user"))
    session = api.create_session(name="through-the-lb")
    viewer = ReconnectingViewer(url, session["id"], api.token)
    reader = threading.Thread(target=viewer.run, daemon=True)
    reader.start()
    # Output that goes on for the whole restart: a line every 0.2 s.
    cmd = api.run(session["id"], "for i in $(seq 1 60); do echo line-$i; sleep 0.2; done", wait=0)

    http_failures = []
    for name, port in ports.items():
        st.stop_process(name)
        st.start_process(web_proc(name, port))
        wait_for(lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz").status_code == 200, 60, name)
        r = api.http.get(f"/api/v1/sessions/{session['id']}/")  # through the balancer
        if r.status_code != 200:
            http_failures.append((name, r.status_code))

    done = api.wait_command(session["id"], cmd["id"], timeout=120)
    assert done["status"] == "succeeded"
    wait_for(lambda: "line-60" in viewer.text(), 60, "the last line on the viewer")
    viewer.stop.set()
    reader.join(10)
    assert viewer.error is None, viewer.error
    # Both nodes were restarted, so the viewer's node went away at least once.
    assert viewer.reconnects >= 1
    seqs = [s for s, _ in viewer.outputs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "output frames lost or repeated"
    assert not viewer.breaks + viewer.viewer.breaks
    # Every line once, in order (the typed command's echo says "line-$i", not a number).
    assert re.findall(r"line-(\d+)", viewer.text()) == [str(i) for i in range(1, 61)]
    assert http_failures == []
