"""Fixtures that start the real thing: Redis, Daphne, Celery backend workers, tmux.

Redis: $VTERM_TEST_REDIS_URL, else database 14 of the Redis on 127.0.0.1:6379 when it
answers, else a private redis-server on a free port. The database is flushed before
and after. SQLite lives in a temporary directory; tmux servers are killed at the end.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests import stack_logs
from vterm_project.devstack import Stack, StackConfig, free_port, redis_answers
from vterm_project.redis_config import client_for_url

# A shell starts background jobs with SIGINT ignored, and children inherit that: the CLI
# tests' Ctrl-C would then reach no one. The tests need it delivered as a terminal would.
signal.signal(signal.SIGINT, signal.default_int_handler)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _claim_redis_db() -> tuple[int, object]:
    """A Redis database number no other test run on this machine is using (flock on a file)."""
    for db in range(15, 5, -1):
        f = open(f"{tempfile.gettempdir()}/vterm-test-redis-db-{db}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return db, f
        except OSError:
            f.close()
    raise RuntimeError("no free Redis test database (6-15): too many test runs at once")


# A bench tool's --redis-url: what scratch_redis does with it.
SCRATCH_REDIS_HELP = "a Redis database the tool may empty, before and after (default: a free one of 127.0.0.1:6379)"


@contextlib.contextmanager
def scratch_redis(url: str | None = None):
    """A Redis database of its own, empty before and emptied after: a test run's, or a bench tool's.
    ``url`` (VTERM_TEST_REDIS_URL, a bench tool's --redis-url) in place of a free database of the
    machine's Redis; a redis-server of its own when neither answers."""
    db, lock = _claim_redis_db()
    url = url or f"redis://127.0.0.1:6379/{db}"
    proc = None
    tmp = None
    try:
        if not redis_answers(url):
            tmp = tempfile.mkdtemp(prefix="vterm-redis-")
            port = free_port()
            proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"redis://127.0.0.1:{port}/0"
            deadline = time.monotonic() + 10
            while not redis_answers(url) and time.monotonic() < deadline:
                time.sleep(0.1)
        client = client_for_url(url)
        client.flushdb()
        try:
            yield url
        finally:
            client.flushdb()
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
            shutil.rmtree(tmp, ignore_errors=True)
        lock.close()


@pytest.fixture(scope="session")
def redis_url():
    with scratch_redis(os.environ.get("VTERM_TEST_REDIS_URL")) as url:
        yield url


def make_stack(redis_url: str, tmp: Path, *, backends: int = 2, prefix: str = "tb", **extra_env) -> Stack:
    cfg = StackConfig(data_dir=tmp, port=free_port(), backends=backends, redis_url=redis_url, flower_port=None,
                      beat=False, backend_prefix=prefix,
                      extra_env={"VTERM_HEARTBEAT_INTERVAL": "1", "SECRET_KEY": "test-secret-key-not-for-shells",
                                 **{k: str(v) for k, v in extra_env.items()}})
    st = Stack(cfg)
    stack_logs.watch(st.log_dir)
    return st


@contextlib.contextmanager
def control_stack(redis_url: str, tmp: Path, name: str, **extra_env):
    """A stack of one backend with the control worker (beat; no local scaler), under a Redis key
    prefix of its own that is deleted afterwards: for what runs on the control worker."""
    prefix = f"{name}{uuid.uuid4().hex[:6]}"
    st = make_stack(redis_url, tmp, backends=1, prefix=prefix, VTERM_REDIS_PREFIX=f"{prefix}:",
                    VTERM_AUTOSCALE_INTERVAL=3600, **extra_env)
    st.config.beat = True
    st.config.scaler = False
    st.prefix = f"{prefix}:"
    try:
        st.start(timeout=120)
        yield st
    finally:
        st.stop()
        r = client_for_url(redis_url)
        for key in r.scan_iter(match=f"{prefix}:*"):
            r.delete(key)


_LOG_OFFSETS = pytest.StashKey[dict]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_LOG_OFFSETS] = stack_logs.offsets()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _LOG_OFFSETS in item.stash:
        errors = stack_logs.errors_since(item.stash[_LOG_OFFSETS])
        if errors:
            report.sections.append(("errors the stacks' processes logged during this test", errors))
    return report


@pytest.fixture(scope="session")
def stack(redis_url, tmp_path_factory):
    """One live stack for the integration tests: web, two backend workers."""
    tmp = tmp_path_factory.mktemp("stack")
    st = make_stack(redis_url, tmp)
    try:
        st.start()
        yield st
    finally:
        st.stop()
        _keep_logs(st, "stack")


def _keep_logs(st: Stack, name: str) -> None:
    dest = ARTIFACTS / "logs" / name
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(st.log_dir).glob("*.log"):
        shutil.copy(f, dest / f.name)


class Api:
    """An httpx client for one user, with the small helpers the tests share."""

    def __init__(self, base_url: str, token: str) -> None:
        self.token = token
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def create_session(self, **body) -> dict:
        r = self.http.post("/api/v1/sessions/", json=body)
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, session_id: str, command: str, wait: float = 30, **extra) -> dict:
        r = self.http.post(f"/api/v1/sessions/{session_id}/commands/", json={"command": command, "wait": wait, **extra})
        assert r.status_code == 201, r.text
        return r.json()

    def wait_command(self, session_id: str, command_id: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.http.get(f"/api/v1/sessions/{session_id}/commands/{command_id}/").json()
            if body["status"] not in ("queued", "running") or time.monotonic() > deadline:
                return body
            time.sleep(0.05)


@contextlib.contextmanager
def admin_browser(stack: Stack, username: str, page: str):
    """A staff user logged in to the admin over real HTTP (a cookie session, as a browser has it);
    yields the client and the answer of the login, which goes on to ``page``."""
    password = f"{username}-pw-1"
    code = ("from django.contrib.auth import get_user_model; U=get_user_model(); "
            f"u,_=U.objects.get_or_create(username={username!r}); u.is_staff=u.is_superuser=True; "
            f"u.set_password({password!r}); u.save()")
    stack.config.manage("shell", "-c", code)
    with httpx.Client(base_url=stack.url, timeout=30, follow_redirects=True) as browser:
        browser.get("/admin/login/")
        r = browser.post(f"/admin/login/?next={page}", data={
            "username": username, "password": password, "next": page,
            "csrfmiddlewaretoken": browser.cookies["csrftoken"]}, headers={"Referer": stack.url + "/admin/login/"})
        yield browser, r


def shell_home(api: Api, session_id: str, data_dir: Path) -> tuple[Path, str]:
    """A sandboxed session's home: where the host (the test) finds it, and its path in the shell."""
    uid, home = api.run(session_id, 'id -u; echo "$HOME"')["output"].split()
    return Path(data_dir) / "homes" / uid, home


@pytest.fixture(scope="session")
def alice(stack) -> Api:
    return Api(stack.url, stack.token("alice"))


@pytest.fixture(scope="session")
def bob(stack) -> Api:
    return Api(stack.url, stack.token("bob"))


@pytest.fixture
def session(alice):
    s = alice.create_session(name="test")
    yield s
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")
