"""The private Redis that devstack starts (`make run`'s) asks for a password, and every client of
the stack has it: Celery's broker (backends, beat's control worker, Flower), redis-py (sync and
asyncio) and channels-redis (a WebSocket viewer's output). Flower asks for a login."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import ARTIFACTS, Api
from tests.faults.harness import wait_for
from tests.ws_viewer import Viewer
from vterm_project.devstack import Stack, StackConfig, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("private-redis")
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=1, redis_port=free_port(), flower_port=free_port(),
                      beat=True, scaler=False, backend_prefix="pw",
                      extra_env={"SECRET_KEY": "test-secret-key-not-for-shells", "VTERM_HEARTBEAT_INTERVAL": "1"})
    st = Stack(cfg)
    try:
        st.start()
        yield st
    finally:
        st.stop()
        dest = ARTIFACTS / "logs" / "private-redis"
        dest.mkdir(parents=True, exist_ok=True)
        for f in st.log_dir.glob("*.log"):
            (dest / f.name).write_bytes(f.read_bytes())


def test_a_client_without_the_password_is_refused(private):
    cfg = private.config
    assert cfg.private_redis and cfg.redis_password and f":{cfg.redis_password}@" in cfg.redis_url
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=cfg.redis_port, socket_timeout=5).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=cfg.redis_port, password="wrong", socket_timeout=5).ping()
    assert redis.Redis.from_url(cfg.redis_url, socket_timeout=5).ping()


def test_the_password_is_on_no_command_line(private):
    cfg = private.config
    conf = cfg.data_dir / "redis" / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert stat.S_IMODE((cfg.data_dir / "redis").stat().st_mode) == 0o700
    for name, proc in private.procs.items():
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert cfg.redis_password.encode() not in cmdline, name
        assert cfg.flower_auth.split(":", 1)[1].encode() not in cmdline, name


def test_the_stack_works_with_the_password(private):
    api = Api(private.url, private.token("pw-alice"))
    ready = api.http.get("/readyz").json()
    assert ready["checks"]["redis"] == "ok" and ready["checks"]["backends"] == 1, ready
    s = api.create_session(name="pw")  # broker (session_start), reply list (redis-py)
    viewer = Viewer(private.url, s["id"], token=api.token)  # channels-redis
    done = api.run(s["id"], "echo through-the-password", wait=30)  # the inbox (redis-py), async replies
    assert done["status"] == "succeeded" and done["output"] == "through-the-password\n", done
    viewer.until(lambda f: f["type"] == "output" and "through-the-password" in f["data"])
    viewer.close()
    api.http.delete(f"/api/v1/sessions/{s['id']}/")


def test_flower_asks_for_a_login_and_reads_the_broker_with_the_password(private):
    cfg = private.config
    url = f"http://127.0.0.1:{cfg.flower_port}"
    user, password = cfg.flower_auth.split(":", 1)
    wait_for(lambda: _get(url + "/healthcheck") == 200, 60, "Flower to answer")
    assert _get(url + "/") == 401
    assert _get(url + "/", auth=(user, "wrong")) == 401
    assert _get(url + "/", auth=(user, password)) == 200
    # Flower's own view of the broker: it connected with the password and lists the queues.
    broker = httpx.get(url + "/broker", auth=(user, password), timeout=30)
    assert broker.status_code == 200 and "vterm.control" in broker.text, broker.text[:500]


def _get(url: str, auth: tuple[str, str] | None = None) -> int | None:
    try:
        return httpx.get(url, auth=auth, timeout=10).status_code
    except httpx.HTTPError:
        return None


def test_flower_password_is_only_in_flowers_environment(private):
    secret = private.config.flower_auth.encode()
    for name, proc in private.procs.items():
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert (b"FLOWER_BASIC_AUTH=" + secret in environ) == (name == "flower"), name
