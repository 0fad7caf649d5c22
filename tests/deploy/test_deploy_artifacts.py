"""The deployment artifacts: docker-compose.yml, the image's entrypoint, HAProxy, Prometheus and the
Helm chart.

External tools are used where they are installed and their part is skipped where not: the Docker
Compose CLI (`docker compose` or `docker-compose`), `haproxy` and `promtool`. The chart is rendered
with helm-python-sdk (Helm's own engine) and checked against Kubernetes' schemas from
kubernetes-validate; both are development dependencies, so their absence is an error.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
CHART_DIR = ROOT / "helm" / "vterm"

# The process commands, as every deployment must run them.
WEB_CMD = "daphne -b 0.0.0.0 -p 8000 vterm_project.asgi:application"
# Compose runs the web nodes behind its HAProxy only: the client address from the X-Forwarded-For it sets.
COMPOSE_WEB_CMD = "daphne --proxy-headers -b 0.0.0.0 -p 8000 vterm_project.asgi:application"
BACKEND_CMD = "celery -A vterm_project worker --pool=solo --loglevel=INFO -n backend@%h -Q vterm.control"
# Beat runs embedded in a small non-backend worker that consumes vterm.control, so that the pool
# reconcile runs even when every backend is dead (docs/failover.md).
BEAT_CMD = ("celery -A vterm_project worker -B --pool=solo --loglevel=INFO -n control@%h -Q vterm.control "
            "--schedule /tmp/celerybeat-schedule")
FLOWER_CMD = "celery -A vterm_project flower --port=5555"
MIGRATE_CMD = "python manage.py migrate --noinput"
BACKEND_PING = "celery -A vterm_project inspect ping -d backend@$HOSTNAME"
CONTROL_PING = "celery -A vterm_project inspect ping -d control@$HOSTNAME"

# Alert name -> (metric its expression must use, its `for`).
ALERTS = {
    "VtermCommandLatencyHigh": ("vterm_command_latency_seconds", "2m"),
    "VtermSessionDropRateHigh": ("vterm_session_drops_total", "1m"),
    "VtermBackendMemoryHigh": ("vterm_backend_memory_ratio", "5m"),
    "VtermBackendDown": ("vterm_backend_heartbeat_age_seconds", "1m"),
    "VtermDatabaseNearlyFull": ("vterm_database_size_bytes", "5m"),
    "VtermDatabaseFillingUp": ("vterm_database_filesystem_free_bytes", "1h"),
    "VtermRedisMemoryHigh": ("vterm_redis_memory_used_bytes", "5m"),
    "VtermRetentionNotRunning": ("vterm_retention_last_run_timestamp_seconds", "10m"),
}


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_service_nodes() -> dict[str, yaml.Node]:
    """The services' YAML nodes before merging, where aliases are still the anchored node itself."""
    root = yaml.compose(COMPOSE_FILE.read_text())
    services = next(value for key, value in root.value if key.value == "services")
    return {key.value: value for key, value in services.value}


def merged_from(node: yaml.Node) -> yaml.Node | None:
    return next((value for key, value in node.value if key.tag == "tag:yaml.org,2002:merge"), None)


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    expected = {
        "lb",
        "web1",
        "web2",
        "backend1",
        "backend2",
        "beat",
        "flower",
        "redis",
        "postgres",
        "prometheus",
        "migrate",
    }
    assert expected <= set(compose["services"])


def test_compose_reuses_one_definition_per_role() -> None:
    nodes = compose_service_nodes()
    assert nodes["web1"] is nodes["web2"], "web1 and web2 must be the same anchored definition"
    backend_definition = merged_from(nodes["backend1"])
    assert backend_definition is not None and backend_definition is merged_from(nodes["backend2"])


def test_compose_process_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["web1"]["command"] == services["web2"]["command"] == COMPOSE_WEB_CMD
    assert services["beat"]["command"] == BEAT_CMD
    assert services["beat"]["environment"]["VTERM_ROLE"] == "control"  # not a backend
    assert services["beat"]["healthcheck"]["test"][-1] == CONTROL_PING.replace("$", "$$")
    assert services["flower"]["command"] == FLOWER_CMD
    assert services["migrate"]["command"] == MIGRATE_CMD
    backend_ids = set()
    for name in ("backend1", "backend2"):
        backend = services[name]
        assert backend["command"] == BACKEND_CMD
        # Compose writes a literal $ as $$.
        assert backend["healthcheck"]["test"][-1] == BACKEND_PING.replace("$", "$$")
        assert backend["hostname"] == name  # the worker's node name is backend@<hostname>
        assert any(volume.endswith(":/var/lib/vterm") for volume in backend["volumes"])
        backend_ids.add(backend["environment"]["VTERM_BACKEND_ID"])
    assert len(backend_ids) == 2


def test_compose_environment(compose: dict[str, Any]) -> None:
    for name in ("web1", "backend1", "backend2", "beat", "flower", "migrate"):
        env = compose["services"][name]["environment"]
        assert env["DATABASE_URL"] == "postgres://vterm:vterm@postgres:5432/vterm"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert "SECRET_KEY" in env and "ALLOWED_HOSTS" in env


def test_compose_redis_keeps_its_data(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in redis["command"]
    assert "--maxmemory-policy noeviction" in redis["command"]
    assert compose["services"]["postgres"]["image"].startswith("postgres:16")


def test_compose_prometheus_mounts_config_and_rules(compose: dict[str, Any]) -> None:
    mounted = {volume.split(":")[0] for volume in compose["services"]["prometheus"]["volumes"]}
    assert {"./deploy/prometheus/prometheus.yml", "./deploy/prometheus/alerts.yml"} <= mounted
    lb_mounts = {volume.split(":")[0] for volume in compose["services"]["lb"]["volumes"]}
    assert "./deploy/haproxy/haproxy.cfg" in lb_mounts
    for source in mounted | lb_mounts:
        if source.startswith("./"):
            assert (ROOT / source).exists(), source


def compose_cli() -> list[str] | None:
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates_with_compose_cli() -> None:
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    env = {**os.environ, "SECRET_KEY": "test-secret-key", "FLOWER_BASIC_AUTH": "admin:test-password"}
    result = run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    # SECRET_KEY and Flower's login are required, never defaulted.
    for required in ("SECRET_KEY", "FLOWER_BASIC_AUTH"):
        without = {k: v for k, v in env.items() if k != required}
        assert run([*cli, "-f", str(COMPOSE_FILE), "config", "-q"], env=without, cwd=ROOT).returncode != 0, required


# ---------------------------------------------------------------------------------------------
# Dockerfile and its entrypoint


def test_dockerfile() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert "FROM python:3.11-slim" in lines
    text = "\n".join(lines)
    assert "install -y --no-install-recommends tmux" in text
    assert "pip install ." in text
    # The terminal page's xterm.js is built into the image, before `pip install .` packages the static files.
    assert "npm ci" in text and "npm run --silent vendor" in text
    assert text.index("COPY --from=vendor /build/sessions/static/vendor/ sessions/static/vendor/") < text.index(
        "pip install .")
    assert "USER vterm" in lines
    assert any(line.startswith("ENTRYPOINT") and "/app/deploy/docker-entrypoint.sh" in line for line in lines)


def test_entrypoint_execs_its_arguments(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    entrypoint = ROOT / "deploy" / "docker-entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    process = subprocess.Popen(
        [str(entrypoint), "sh", "-c", 'echo "$$ $VTERM_DATA_DIR"'],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "VTERM_DATA_DIR": str(data_dir)},
    )
    out, _ = process.communicate(timeout=10)
    pid, seen_dir = out.split()
    # exec: the command replaced the script in the same process, so it gets the signals.
    assert process.returncode == 0 and int(pid) == process.pid
    assert seen_dir == str(data_dir) and data_dir.is_dir()


# ---------------------------------------------------------------------------------------------
# Prometheus


@pytest.fixture(scope="module")
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS_FILE.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_alert_rules_are_complete(alert_rules: list[dict[str, Any]]) -> None:
    for rule in alert_rules:
        assert {"alert", "expr", "for", "labels", "annotations"} <= set(rule), rule.get("alert")
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    by_name = {rule["alert"]: rule for rule in alert_rules}
    assert set(ALERTS) <= set(by_name)
    for name, (metric, duration) in ALERTS.items():
        assert metric in by_name[name]["expr"], name
        assert by_name[name]["for"] == duration, name
    assert 'vterm_backends{status="dead"}' in by_name["VtermBackendDown"]["expr"]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return path


def test_promtool_checks_rules_and_config() -> None:
    tool = promtool()
    rules = run([tool, "check", "rules", str(ALERTS_FILE)])
    assert rules.returncode == 0, rules.stdout + rules.stderr
    config = run([tool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")])
    assert config.returncode == 0, config.stdout + config.stderr


def fired(name: str, severity: str, annotations: dict[str, str], **labels: str) -> dict[str, Any]:
    alert = {"exp_labels": {"severity": severity, **labels}, "exp_annotations": annotations}
    return {"eval_time": "10m", "alertname": name, "exp_alerts": [alert]}


def test_alert_rules_fire_on_bad_data_only(tmp_path: Path) -> None:
    """`promtool test rules` on made-up series: each alert fires once its condition has held for
    its duration, with its annotations filled in, and none fires on a healthy pool."""
    tool = promtool()

    def bucket(le: str, values: str) -> dict[str, str]:
        return {"series": f'vterm_command_latency_seconds_bucket{{le="{le}"}}', "values": values}

    unhealthy_pool = [
        # Ten commands a minute, all between 50 and 100 ms.
        bucket("0.005", "0x15"),
        bucket("0.05", "0x15"),
        bucket("0.1", "0+10x15"),
        bucket("+Inf", "0+10x15"),
        # Two drops a minute among 100 sessions: 10% in 5 minutes.
        {"series": "vterm_session_drops_total", "values": "0+2x15"},
        {"series": 'vterm_sessions{status="active",backend="backend-1"}', "values": "100x15"},
        {"series": 'vterm_backend_memory_ratio{backend="backend-1"}', "values": "0.9x15"},
        {"series": 'vterm_backend_heartbeat_age_seconds{backend="backend-2"}', "values": "30x15"},
        # The database at 85% of VTERM_DATABASE_MAX_BYTES; its filesystem losing 2 GB a minute
        # (full in a few hours); Redis at 90% of maxmemory; the purge's last run at time 0.
        {"series": "vterm_database_size_bytes", "values": "850000000x150"},
        {"series": "vterm_database_max_bytes", "values": "1000000000x150"},
        {"series": "vterm_database_filesystem_size_bytes", "values": "1000000000000x150"},
        {"series": "vterm_database_filesystem_free_bytes", "values": "500000000000-2000000000x150"},
        {"series": "vterm_redis_memory_used_bytes", "values": "900000000x150"},
        {"series": "vterm_redis_memory_max_bytes", "values": "1000000000x150"},
        {"series": "vterm_redis_memory_system_bytes", "values": "16000000000x150"},
        {"series": "vterm_retention_last_run_timestamp_seconds", "values": "0x150"},
    ]
    healthy_pool = [
        bucket("0.005", "0+10x15"),
        bucket("0.05", "0+10x15"),
        bucket("0.1", "0+10x15"),
        bucket("+Inf", "0+10x15"),
        {"series": "vterm_session_drops_total", "values": "0x15"},
        {"series": 'vterm_sessions{status="active",backend="backend-1"}', "values": "100x15"},
        {"series": 'vterm_backend_memory_ratio{backend="backend-1"}', "values": "0.5x15"},
        {"series": 'vterm_backend_heartbeat_age_seconds{backend="backend-2"}', "values": "2x15"},
        {"series": 'vterm_backends{status="dead"}', "values": "0x15"},
        # Room to spare and steady; Redis without maxmemory, at 6% of the host's memory; the purge
        # finishing every minute.
        {"series": "vterm_database_size_bytes", "values": "100000000x150"},
        {"series": "vterm_database_max_bytes", "values": "1000000000x150"},
        {"series": "vterm_database_filesystem_size_bytes", "values": "1000000000000x150"},
        {"series": "vterm_database_filesystem_free_bytes", "values": "500000000000x150"},
        {"series": "vterm_redis_memory_used_bytes", "values": "1000000000x150"},
        {"series": "vterm_redis_memory_max_bytes", "values": "0x150"},
        {"series": "vterm_redis_memory_system_bytes", "values": "16000000000x150"},
        {"series": "vterm_retention_last_run_timestamp_seconds", "values": "0+60x150"},
    ]
    # Redis without maxmemory, at 90% of the host's memory.
    redis_without_maxmemory = [
        {"series": "vterm_redis_memory_used_bytes", "values": "14400000000x15"},
        {"series": "vterm_redis_memory_max_bytes", "values": "0x15"},
        {"series": "vterm_redis_memory_system_bytes", "values": "16000000000x15"},
    ]
    unhealthy_alerts = [
        fired(
            "VtermCommandLatencyHigh",
            "warning",
            {
                "summary": "vterm command latency p99 is above 50 ms",
                "description": "The p99 command latency has been 99.5ms for 2 minutes.",
            },
        ),
        fired(
            "VtermSessionDropRateHigh",
            "critical",
            {
                "summary": "More than 5% of vterm sessions dropped",
                "description": "10% of the sessions were dropped in the last 5 minutes.",
            },
        ),
        fired(
            "VtermBackendMemoryHigh",
            "warning",
            {
                "summary": "vterm backend backend-1 uses over 80% of its memory",
                "description": "Backend backend-1 has used 90% of its memory for 5 minutes; drain it or add backends.",
            },
            backend="backend-1",
        ),
        fired(
            "VtermBackendDown",
            "critical",
            {
                "summary": "A vterm backend is down",
                "description": "Backend backend-2 has missed its heartbeat or is marked dead; its sessions are being rebuilt elsewhere.",
            },
            backend="backend-2",
        ),
        # Not yet: the condition has held for less than the rule's `for`.
        {"eval_time": "4m", "alertname": "VtermBackendMemoryHigh", "exp_alerts": []},
        fired(
            "VtermDatabaseNearlyFull",
            "warning",
            {
                "summary": "The vterm database is nearly full",
                "description": "85% of the database's space is used; shorten retention (VTERM_RETENTION_*) or add space.",
            },
        ),
        {"eval_time": "30m", "alertname": "VtermDatabaseFillingUp", "exp_alerts": []},
        {**fired(
            "VtermDatabaseFillingUp",
            "warning",
            {
                "summary": "The vterm database will be full within 3 days",
                "description": "At the last 6 hours' rate of growth the database fills its space within 3 days; "
                               "shorten retention (VTERM_RETENTION_*) or add space.",
            },
        ), "eval_time": "2h"},
        fired(
            "VtermRedisMemoryHigh",
            "warning",
            {
                "summary": "vterm's Redis is nearly full",
                "description": "Redis uses 90% of its memory; when full it refuses writes (noeviction). Lower "
                               "VTERM_STREAM_MAX_CHARS or VTERM_STREAM_RETENTION, or give it more memory.",
            },
        ),
        {"eval_time": "10m", "alertname": "VtermRetentionNotRunning", "exp_alerts": []},
        {**fired(
            "VtermRetentionNotRunning",
            "warning",
            {
                "summary": "The vterm retention purge has not run for an hour",
                "description": "The retention purge last finished 2h 0m 0s ago; until it runs the database only "
                               "grows. Is the beat process (control worker) up?",
            },
        ), "eval_time": "2h"},
    ]
    healthy_alerts = [{"eval_time": t, "alertname": name, "exp_alerts": []} for name in ALERTS for t in ("10m", "2h")]
    redis_alerts = [fired(
        "VtermRedisMemoryHigh",
        "warning",
        {
            "summary": "vterm's Redis is nearly full",
            "description": "Redis uses 90% of its memory; when full it refuses writes (noeviction). Lower "
                           "VTERM_STREAM_MAX_CHARS or VTERM_STREAM_RETENTION, or give it more memory.",
        },
    )]
    tests = {
        "rule_files": [str(ALERTS_FILE)],
        "evaluation_interval": "1m",
        "tests": [
            {"interval": "1m", "input_series": unhealthy_pool, "alert_rule_test": unhealthy_alerts},
            {"interval": "1m", "input_series": healthy_pool, "alert_rule_test": healthy_alerts},
            {"interval": "1m", "input_series": redis_without_maxmemory, "alert_rule_test": redis_alerts},
        ],
    }
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(yaml.safe_dump(tests))
    result = run([tool, "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# HAProxy


def haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        pytest.skip("haproxy is not installed (Debian package haproxy)")
    return path


def self_signed_pem(path: Path) -> Path:
    """A certificate and its key in one PEM file, as HAProxy's `crt` takes them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    return path


def haproxy_env(web1: int, web2: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "VTERM_WEB1": f"127.0.0.1:{web1}",
        "VTERM_WEB2": f"127.0.0.1:{web2}",
        "VTERM_LB_HTTP": f"127.0.0.1:{free_port()}",
        "VTERM_LB_STATS": f"127.0.0.1:{free_port()}",
        **extra,
    }


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_haproxy_config_is_valid(tmp_path: Path, tls: bool) -> None:
    binary = haproxy()
    extra = {}
    if tls:
        pem = self_signed_pem(tmp_path / "vterm.pem")
        extra = {"VTERM_LB_TLS": "1", "VTERM_LB_CERT": str(pem), "VTERM_LB_HTTPS": f"127.0.0.1:{free_port()}"}
    result = run([binary, "-c", "-f", str(HAPROXY_CFG)], env=haproxy_env(free_port(), free_port(), **extra))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout + result.stderr


class StubWebNode(BaseHTTPRequestHandler):
    """Stands in for a web node: /readyz, /whoami, and a WebSocket-style upgrade that echoes."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        node: StubServer = self.server  # type: ignore[assignment]
        if self.path == "/readyz":
            self.reply(200 if node.ready else 503, b"ready" if node.ready else b"not ready")
        elif self.path.startswith("/ws/") and self.headers.get("Upgrade", "").lower() == "websocket":
            # HAProxy checks the handshake (RFC 6455 section 4.2.2) before it opens the tunnel.
            key = self.headers["Sec-WebSocket-Key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header(
                "Sec-WebSocket-Accept", base64.b64encode(hashlib.sha1(key.encode()).digest()).decode()
            )
            self.send_header("X-Node", node.name)
            self.end_headers()
            self.wfile.flush()
            self.connection.settimeout(30)
            while data := self.connection.recv(4096):
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self.reply(200, node.name.encode())

    def reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class StubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), StubWebNode)
        self.name = name
        self.ready = True


@pytest.fixture
def stub_nodes() -> Iterator[tuple[StubServer, StubServer]]:
    nodes = (StubServer("web1"), StubServer("web2"))
    for node in nodes:
        threading.Thread(target=node.serve_forever, daemon=True).start()
    yield nodes
    for node in nodes:
        node.shutdown()
        node.server_close()


def http_get(url: str) -> tuple[int, Message, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def open_websocket(lb: str) -> tuple[socket.socket, str]:
    """Upgrade a connection through the LB; returns it and the node that took it."""
    host, port = lb.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(
        b"GET /ws/v1/sessions/1/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "connection closed during the upgrade"
        head += chunk
    status_line, *header_lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert status_line.startswith("HTTP/1.1 101"), status_line
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in header_lines)}
    return sock, headers["x-node"]


def echoes(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"echo me")
        return sock.recv(4096) == b"echo me"
    except OSError:
        return False


def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except OSError:  # not listening yet
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_haproxy_in_front_of_two_nodes(tmp_path: Path, stub_nodes: tuple[StubServer, StubServer]) -> None:
    """Run the real config: even balancing, tunnels for /ws/, health checks on /readyz that move
    traffic (and close WebSockets) away from an unready node, no public /metrics, and 429."""
    binary = haproxy()
    web1, web2 = stub_nodes
    rate_limit = 60
    env = haproxy_env(web1.server_address[1], web2.server_address[1], VTERM_LB_RATE_LIMIT=str(rate_limit))
    lb = env["VTERM_LB_HTTP"]
    log = tmp_path / "haproxy.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: http_get(f"http://{lb}/whoami")[0] == 200, 10, "HAProxy to serve")

        served_by = [http_get(f"http://{lb}/whoami")[2].decode() for _ in range(10)]
        assert served_by.count("web1") == served_by.count("web2") == 5, served_by

        assert http_get(f"http://{lb}/metrics")[0] == 403

        # Least connections: two WebSockets land on the two nodes.
        sockets = dict(open_websocket(lb)[::-1] for _ in range(2))
        assert set(sockets) == {"web1", "web2"}
        assert all(echoes(sock) for sock in sockets.values())

        # web2 stops being ready: HAProxy takes it out and closes its WebSockets, so that
        # their clients reconnect through web1; web1's WebSocket is untouched.
        web2.ready = False
        wait_for(lambda: not echoes(sockets["web2"]), 15, "web2's WebSocket to be closed")
        assert echoes(sockets["web1"])
        assert {http_get(f"http://{lb}/whoami")[2] for _ in range(4)} == {b"web1"}
        for sock in sockets.values():
            sock.close()

        # Per-client rate limit: a 429 with Retry-After once over the limit in 10 s.
        statuses = [http_get(f"http://{lb}/whoami") for _ in range(rate_limit + 5)]
        limited = [(headers, body) for status, headers, body in statuses if status == 429]
        assert limited, "no request was rate limited"
        headers, body = limited[0]
        assert headers["Retry-After"] == "10" and json.loads(body)["detail"]
    except AssertionError:
        print(log.read_text())
        raise
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# Helm chart

KUBERNETES_VERSION = "1.30"
CUSTOM_RESOURCES = {"PrometheusRule", "ServiceMonitor", "ScaledObject"}
DATABASE = {"secret": {"databaseUrl": "postgres://vterm:secret@postgres:5432/vterm"}}

RENDER_CASES: dict[str, dict[str, Any]] = {
    "defaults": DATABASE,
    "everything-on": {
        **DATABASE,
        "config": {"allowedHosts": ["vterm.internal"], "extraEnv": {"VTERM_BACKEND_CAPACITY": 50}},
        "ingress": {"enabled": True, "tls": {"enabled": True}},
        "backend": {"persistence": {"enabled": True, "storageClassName": "fast"}},
        "keda": {"enabled": True},
        "prometheus": {"rules": {"enabled": True}, "serviceMonitor": {"enabled": True}},
        "redis": {"sentinel": {"enabled": False}},
    },
    "external-redis-and-hpa": {
        **DATABASE,
        "redis": {"enabled": False},
        "externalRedis": {"url": "redis://redis.example:6379/0"},
        "web": {"autoscaling": {"enabled": False}, "pdb": {"enabled": False}},
        "backend": {"autoscaling": {"enabled": True}},
        "flower": {"enabled": False},
        "migrate": {"enabled": False},
    },
    "existing-secret": {"secret": {"existingSecret": "vterm-prod"}, "redis": {"auth": {"enabled": False}}},
}


@pytest.fixture(scope="module")
def helm() -> Any:
    return importlib.import_module("helm_python")  # helm-python-sdk, a development dependency


def render(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART_DIR))
    manifests = chart.render(values, name="vterm", namespace="terminals", is_install=True)
    return [doc for text in manifests.values() for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] in {"Deployment", "StatefulSet", "Job"}]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def container(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return by_kind(docs, kind)[name]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("case", RENDER_CASES)
def test_chart_manifests_match_kubernetes_schemas(helm: Any, case: str) -> None:
    validator = importlib.import_module("kubernetes_validate")
    docs = render(helm, RENDER_CASES[case])
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            continue  # no schema in Kubernetes; checked by the tests below
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


@pytest.mark.parametrize("case", RENDER_CASES)
def test_chart_objects_refer_to_each_other(helm: Any, case: str) -> None:
    values = RENDER_CASES[case]
    docs = render(helm, values)
    pod_labels = {
        (doc["kind"], doc["metadata"]["name"]): doc["spec"]["template"]["metadata"]["labels"]
        for doc in workloads(docs)
    }
    services = by_kind(docs, "Service")
    secret_names = set(by_kind(docs, "Secret")) | {values.get("secret", {}).get("existingSecret")}

    for doc in workloads(docs):
        if doc["kind"] != "Job":
            assert selects(
                doc["spec"]["selector"]["matchLabels"], doc["spec"]["template"]["metadata"]["labels"]
            )
        for source in doc["spec"]["template"]["spec"]["containers"][0]["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in by_kind(docs, "ConfigMap")
            else:
                assert source["secretRef"]["name"] in secret_names
    for service in services.values():
        assert sum(selects(service["spec"]["selector"], labels) for labels in pod_labels.values()) == 1, (
            service["metadata"]["name"]
        )
    for pdb in by_kind(docs, "PodDisruptionBudget").values():
        assert any(selects(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pod_labels.values())
    for scaler in [
        *by_kind(docs, "HorizontalPodAutoscaler").values(),
        *by_kind(docs, "ScaledObject").values(),
    ]:
        target = scaler["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in pod_labels
    for statefulset in by_kind(docs, "StatefulSet").values():
        assert services[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for ingress in by_kind(docs, "Ingress").values():
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        assert backend["port"]["name"] in {
            port["name"] for port in services[backend["name"]]["spec"]["ports"]
        }
    for monitor in by_kind(docs, "ServiceMonitor").values():
        selected = [
            s
            for s in services.values()
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        components = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected}
        assert {"web", "flower"} <= components
        port = monitor["spec"]["endpoints"][0]["port"]
        assert all(
            port in {p["name"] for p in services[f"vterm-{c}"]["spec"]["ports"]} for c in ("web", "flower")
        )


def test_chart_process_commands_and_probes(helm: Any) -> None:
    docs = render(helm, DATABASE)
    web = container(docs, "Deployment", "vterm-web")
    assert web["args"] == WEB_CMD.split()
    assert "command" not in web  # keep the image's entrypoint (tini, docker-entrypoint.sh)
    assert web["ports"] == [{"name": "http", "containerPort": 8000}]
    assert web["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert web["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    beat = container(docs, "Deployment", "vterm-beat")
    assert beat["args"] == BEAT_CMD.split()
    assert {"name": "VTERM_ROLE", "value": "control"} in beat["env"]  # not a backend
    assert beat["livenessProbe"]["exec"]["command"] == ["sh", "-c", CONTROL_PING]
    assert by_kind(docs, "Deployment")["vterm-beat"]["spec"]["replicas"] == 1
    assert container(docs, "Deployment", "vterm-flower")["args"] == FLOWER_CMD.split()

    migrate = by_kind(docs, "Job")["vterm-migrate"]
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == MIGRATE_CMD.split()
    assert "pre-upgrade" in migrate["metadata"]["annotations"]["helm.sh/hook"]

    statefulset = by_kind(docs, "StatefulSet")["vterm-backend"]
    pod = statefulset["spec"]["template"]["spec"]
    backend = pod["containers"][0]
    assert backend["args"] == BACKEND_CMD.split()
    env = {item["name"]: item for item in backend["env"]}
    assert env["VTERM_BACKEND_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert backend["livenessProbe"]["exec"]["command"] == ["sh", "-c", BACKEND_PING]
    assert {"name": "data", "mountPath": "/var/lib/vterm"} in backend["volumeMounts"]
    assert {"name": "data", "emptyDir": {}} in pod["volumes"]
    assert pod["terminationGracePeriodSeconds"] >= 120  # time to drain
    for workload in workloads(docs):
        assert workload["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_chart_connects_to_redis_through_sentinel(helm: Any) -> None:
    env = {
        item["name"]: item
        for item in container(render(helm, DATABASE), "StatefulSet", "vterm-backend")["env"]
    }
    assert env["REDIS_URL"]["value"] == "sentinel://:$(REDIS_PASSWORD)@vterm-redis:26379/0"
    assert env["REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
    # The Bitnami sentinels ask for the same password (auth.sentinel); started for real in test_chart_processes.py.
    assert env["REDIS_SENTINEL_PASSWORD"]["value"] == "$(REDIS_PASSWORD)"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "vterm-redis",
        "key": "redis-password",
    }
    # Kubernetes expands $(NAME) only from variables defined earlier in the list.
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL")
    assert names.index("REDIS_PASSWORD") < names.index("REDIS_SENTINEL_PASSWORD")
    assert names.index("POD_IP") < names.index("ALLOWED_HOSTS")

    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    redis = next(dep for dep in chart["dependencies"] if dep["name"] == "redis")
    assert redis["condition"] == "redis.enabled" and "bitnami" in redis["repository"]
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())["redis"]
    assert values["sentinel"]["enabled"] is True
    assert values["auth"]["sentinel"] is True
    assert values["sentinel"]["downAfterMilliseconds"] <= 5000  # not Bitnami's minute without Redis
    assert "maxmemory-policy noeviction" in values["commonConfiguration"]
    assert "appendonly yes" in values["commonConfiguration"]


def test_chart_autoscales_backends_on_the_pool_metric(helm: Any) -> None:
    hpa_docs = render(helm, RENDER_CASES["external-redis-and-hpa"])
    hpa = by_kind(hpa_docs, "HorizontalPodAutoscaler")["vterm-backend"]["spec"]
    assert hpa["metrics"][0]["external"]["metric"]["name"] == "vterm_pool_desired_backends"
    assert hpa["metrics"][0]["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert "replicas" not in by_kind(hpa_docs, "StatefulSet")["vterm-backend"]["spec"]  # the HPA owns it

    keda_docs = render(helm, RENDER_CASES["everything-on"])
    trigger = by_kind(keda_docs, "ScaledObject")["vterm-backend"]["spec"]["triggers"][0]
    assert trigger["metadata"]["query"] == 'max(vterm_pool_desired_backends{namespace="terminals"})'
    assert "HorizontalPodAutoscaler" not in {
        doc["kind"] for doc in keda_docs if doc["metadata"]["name"] == "vterm-backend"
    }

    with pytest.raises(helm.HelmRenderError, match="enable one of them"):
        render(helm, {**DATABASE, "keda": {"enabled": True}, "backend": {"autoscaling": {"enabled": True}}})


def test_chart_prometheus_rule_is_the_rule_file(helm: Any) -> None:
    docs = render(helm, RENDER_CASES["everything-on"])
    rule = by_kind(docs, "PrometheusRule")["vterm"]
    assert rule["spec"] == yaml.safe_load(ALERTS_FILE.read_text())
    assert "PrometheusRule" not in {doc["kind"] for doc in render(helm, DATABASE)}


def test_chart_requires_a_database(helm: Any) -> None:
    with pytest.raises(helm.HelmRenderError, match="secret.databaseUrl is required"):
        render(helm, {})


def test_chart_lints_clean(helm: Any, tmp_path: Path) -> None:
    """`helm lint --strict` on a copy without the Redis dependency, which cannot be downloaded
    here (`helm dependency build` needs the network); its own templates are all linted."""
    chart_copy = tmp_path / "vterm"
    shutil.copytree(CHART_DIR, chart_copy)  # follows files/alerts.yml's link
    chart = yaml.safe_load((chart_copy / "Chart.yaml").read_text())
    chart.pop("dependencies")
    (chart_copy / "Chart.yaml").write_text(yaml.safe_dump(chart))
    report = helm.lint(str(chart_copy), RENDER_CASES["everything-on"], strict=True)
    assert report["errors"] == [], report


def test_make_run_beat_is_a_control_worker_not_a_backend(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`make run` and the test stacks run beat as the deployments do: in a worker consuming
    vterm.control with VTERM_ROLE set, so that it never registers as a backend."""
    from vterm_project.devstack import StackConfig
    from workers.celery_hooks import _is_backend

    procs = {p.name: p for p in StackConfig(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0").processes()}
    beat = procs["beat"]
    argv = beat.argv[beat.argv.index("celery"):]
    assert argv[:4] == ["celery", "-A", "vterm_project", "worker"] and "-B" in argv
    assert argv[argv.index("-Q") + 1] == "vterm.control" and argv[argv.index("-n") + 1] == "control@%h"
    assert "VTERM_BACKEND_ID" not in beat.env
    monkeypatch.setenv("VTERM_ROLE", beat.env["VTERM_ROLE"])
    assert not _is_backend()
