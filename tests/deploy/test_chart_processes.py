"""The Helm chart's own processes, started as local processes against a local Redis Sentinel set.

The chart is rendered (helm-python-sdk, as tests/deploy/test_deploy_artifacts.py does) with its
default Redis: Sentinel, master set ``mymaster``, password on the master and on the sentinels.
The migrate Job's, the web Deployment's and the backend StatefulSet's containers are taken as
they are: their args, and their environment resolved as Kubernetes resolves it (the image's ENV,
envFrom the chart's ConfigMap and Secret, then ``env`` in order with ``$(VAR)`` references,
``fieldRef`` and ``secretKeyRef``; the Bitnami Redis secret the chart refers to holds the Sentinel
set's password). What only a cluster provides is mapped to loopback: the Service ``vterm-redis:26379``
becomes the three local sentinels, the pod's IP 127.0.0.1, the container's port a free one, the
image's tools the virtualenv's. Then a command runs through them. A chart whose processes cannot
start, or cannot reach Redis through Sentinel, fails here.
"""

from __future__ import annotations

import base64
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml

from tests.redis_sentinel import SentinelSet
from vterm_project.devstack import free_port
from workers.tmux.pool import server_sockets

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "vterm"
BIN = Path(sys.executable).parent
REDIS_PASSWORD = "chart-redis-pw"
REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _render(values: dict) -> list[dict]:
    helm = importlib.import_module("helm_python")
    manifests = helm.Chart.load(str(CHART_DIR)).render(values, name="vterm", namespace="terminals",
                                                      is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def _image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's last stage (what every container starts with)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    last = text[text.rindex("\nFROM "):]
    env: dict[str, str] = {}
    for line in last.splitlines():
        if line.startswith("ENV "):
            env.update(dict(pair.split("=", 1) for pair in line[4:].split()))
    return env


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR): replaced when VAR is defined before; $$ is a literal $."""
    return REF.sub(lambda m: env.get(m.group(1), m.group(0)), value.replace("$$(", "\0(")).replace("\0(", "$(")


class Pod:
    """One container of the rendered chart, as a local process."""

    def __init__(self, docs: list[dict], kind: str, name: str, *, pod_name: str, secrets: dict, services: dict,
                 log_dir: Path) -> None:
        workload = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)
        self.container = workload["spec"]["template"]["spec"]["containers"][0]
        self.name, self.pod_name, self.log_dir = name, pod_name, log_dir
        configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        rendered = {d["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in d.get("data", {}).items()}
                    for d in docs if d["kind"] == "Secret"}
        self.secrets = {**secrets, **rendered}
        env = {**_image_env(), "HOSTNAME": socket.gethostname()}  # a pod's hostname is its HOSTNAME
        for source in self.container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(configmaps[source["configMapRef"]["name"]])
            else:
                env.update(self.secrets[source["secretRef"]["name"]])
        for item in self.container.get("env", []):
            env[item["name"]] = self._value(item, env)
        for address, local in services.items():  # a Service name -> what answers for it here
            env = {k: v.replace(address, local) for k, v in env.items()}
        self.env = env
        self.proc: subprocess.Popen | None = None

    def _value(self, item: dict, env: dict[str, str]) -> str:
        if "value" in item:
            return _expand(item["value"], env)
        ref = item["valueFrom"]
        if "fieldRef" in ref:
            return {"metadata.name": self.pod_name, "status.podIP": "127.0.0.1"}[ref["fieldRef"]["fieldPath"]]
        key = ref["secretKeyRef"]
        assert key["name"] in self.secrets, f"{self.name}: no secret {key['name']!r} (the chart refers to it)"
        return self.secrets[key["name"]][key["key"]]

    def argv(self, *, replace: dict[str, str] | None = None) -> list[str]:
        args = [(replace or {}).get(a, a) for a in self.container["args"]]
        exe = BIN / args[0]
        return [str(exe) if exe.exists() else args[0], *args[1:]]

    def process_env(self) -> dict[str, str]:
        return {**self.env, "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}

    def run(self, argv: list[str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(argv or self.argv(), env=self.process_env(), cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def start(self, **kw) -> None:
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(self.argv(**kw), env=self.process_env(), cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        f = self.log_dir / f"{self.name}.log"
        return f.read_text(errors="replace")[-4000:] if f.exists() else ""

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def chart_sentinels():
    # As the Bitnami chart runs them with auth.sentinel: one password for the master and the sentinels.
    with SentinelSet(password=REDIS_PASSWORD, sentinel_password=REDIS_PASSWORD, master_name="mymaster") as s:
        yield s


def test_the_charts_web_and_backend_run_a_command_through_sentinel(chart_sentinels, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    docs = _render({"secret": {"databaseUrl": f"sqlite:///{tmp_path / 'vterm.sqlite3'}"},
                    "config": {"dataDir": str(data)}})
    sentinels = ",".join(f"127.0.0.1:{p}" for p in chart_sentinels.sentinel_ports)
    common = {"secrets": {"vterm-redis": {"redis-password": REDIS_PASSWORD}},
              "services": {"vterm-redis:26379": sentinels}, "log_dir": tmp_path}
    migrate = Pod(docs, "Job", "vterm-migrate", pod_name="vterm-migrate-x", **common)
    web = Pod(docs, "Deployment", "vterm-web", pod_name="vterm-web-0", **common)
    backend = Pod(docs, "StatefulSet", "vterm-backend", pod_name="vterm-backend-0", **common)
    # What the chart gives them: Sentinel, its master set and both passwords (nothing added here).
    for pod in (migrate, web, backend):
        assert pod.env["REDIS_URL"] == f"sentinel://:{REDIS_PASSWORD}@{sentinels}/0", pod.env["REDIS_URL"]
        assert pod.env["REDIS_SENTINEL_MASTER"] == "mymaster"
        assert pod.env["REDIS_SENTINEL_PASSWORD"] == REDIS_PASSWORD
    assert backend.env["VTERM_BACKEND_ID"] == "vterm-backend-0"

    done = migrate.run()
    assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    try:
        web.start(replace={"0.0.0.0": "127.0.0.1", "8000": str(port)})
        backend.start()
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 90
        ready = None
        while time.monotonic() < end:
            assert web.alive(), f"the chart's web process exited:\n{web.log()}"
            assert backend.alive(), f"the chart's backend process exited:\n{backend.log()}"
            try:
                with urllib.request.urlopen(url + web.container["readinessProbe"]["httpGet"]["path"], timeout=3) as r:
                    ready = json.loads(r.read())
                if ready["checks"].get("backends", 0) >= 1:
                    break
            except Exception:  # noqa: BLE001, S110 (not up yet)
                pass
            time.sleep(0.5)
        assert ready and ready["status"] == "ok" and ready["checks"]["redis"] == "ok", (ready, web.log(),
                                                                                         backend.log())
        token = web.run([str(BIN / "python"), "manage.py", "create_api_token", "chart-user"])
        assert token.returncode == 0, token.stderr
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token.stdout.split()[-1]}"},
                          timeout=60) as http:
            s = http.post("/api/v1/sessions/", json={"name": "chart"})
            assert s.status_code == 201, s.text
            assert s.json()["backend"] == "vterm-backend-0"
            c = http.post(f"/api/v1/sessions/{s.json()['id']}/commands/",
                          json={"command": "cd /tmp && echo through-sentinel", "wait": 30})
            assert c.status_code == 201, c.text
            assert c.json()["status"] == "succeeded" and c.json()["output"] == "through-sentinel\n", c.json()
            assert c.json()["cwd"] == "/tmp"
        # The backend's liveness probe, as kubelet runs it: a Celery ping through the broker.
        probe = backend.run(backend.container["livenessProbe"]["exec"]["command"], timeout=60)
        assert probe.returncode == 0, probe.stdout + probe.stderr
    finally:
        backend.stop()
        web.stop()
        for sock in server_sockets(data / "tmux" / "vterm-backend-0"):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)
        shutil.rmtree(data / "tmux", ignore_errors=True)
