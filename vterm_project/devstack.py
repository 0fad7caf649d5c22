"""The whole stack on one machine, for `make run`, the tests and the benchmark.

One list of processes (web, backend workers, beat in a control worker of its own, Flower,
and a private Redis when no REDIS_URL is given) is either run by supervisord in the foreground
(`make run`: vterm_project/supervisor_conf.py; it restarts what crashes) or started in the
background by ``Stack`` (tests, benchmark). Same commands either way.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether Redis (or, for a sentinel:// URL, its master) answers a PING."""
    from vterm_project.redis_config import client_for_url

    try:
        client = client_for_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Under supervisord (`make run`): a process that exits sooner than this after its start has
    # failed to start, and is tried again with a growing delay, a bounded number of times.
    startsecs: int = 10


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600 from the start, not chmod-ed after)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)  # an older file keeps its mode through O_CREAT


def read_or_make_secret(path: Path, nbytes: int = 32) -> str:
    """The secret kept in ``path``, made (random, URL-safe) on the first call."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(nbytes))
    path.chmod(0o600)
    return path.read_text().strip()


@dataclass
class StackConfig:
    data_dir: Path
    port: int = 8000
    backends: int = 2
    redis_url: str | None = None  # None: start a private redis-server with AOF under data_dir
    redis_port: int = 6390
    # The private redis-server's password (requirepass); None: a new random one.
    redis_password: str | None = None
    database_url: str | None = None  # None: SQLite under data_dir
    flower_port: int | None = 5555
    # Flower's login, "user:password" (FLOWER_BASIC_AUTH); None: user admin with a new random password.
    flower_auth: str | None = None
    beat: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    backend_prefix: str = "backend"
    # Daphne processes on the port (vterm_project/web_listen.py): one runs Python on one core at a time.
    web_processes: int = 1
    # The autoscaler's local executor (vterm_project/local_scaler.py); runs only with beat.
    scaler: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.redis_url is None:
            self.private_redis = True
            # Shells must not reach the service's Redis: it asks for a password (docs/security.md).
            self.redis_password = self.redis_password or secrets.token_urlsafe(24)
            self.redis_url = f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"
        else:
            self.private_redis = False
        if self.flower_port and not self.flower_auth:
            self.flower_auth = f"admin:{secrets.token_urlsafe(16)}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VTERM_BACKEND_ID", "PYTEST_"))}
        env.update({
            "DJANGO_SETTINGS_MODULE": "vterm_project.settings",
            "VTERM_DATA_DIR": str(self.data_dir),
            "REDIS_URL": self.redis_url,
            "PYTHONUNBUFFERED": "1",
            "VTERM_BACKENDS": str(self.backends),  # the pool's minimum (settings.VTERM POOL_MIN_BACKENDS)
        })
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def backend_ids(self) -> list[str]:
        return [f"{self.backend_prefix}-{i}" for i in range(1, self.backends + 1)]

    def processes(self) -> list[Proc]:
        py = str(BIN / "python")
        procs = []
        if self.private_redis:
            procs.append(Proc("redis", [shutil.which("redis-server") or "redis-server", str(self.redis_conf())],
                              startsecs=3))
        procs.extend(self.web_procs())
        for bid in self.backend_ids():
            # A backend that cannot start tries 3 times over ~6 s before it exits (workers/celery_hooks.py):
            # that is a failed start too.
            procs.append(Proc(bid, backend_argv(bid), {"VTERM_BACKEND_ID": bid}, startsecs=30))
        if self.beat:
            procs.append(Proc("beat", beat_argv(str(self.data_dir / "celerybeat-schedule")), {"VTERM_ROLE": "control"},
                              startsecs=15))
        if self.beat and self.scaler:
            procs.append(Proc("scaler", [py, str(ROOT / "manage.py"), "vterm_local_scaler", "--prefix",
                                         self.backend_prefix, "--base", str(self.backends)],
                              {"VTERM_ROLE": "scaler"}))
        if self.flower_port:
            procs.append(Proc("flower", [py, "-m", "celery", "-A", "vterm_project", "flower",
                                         f"--port={self.flower_port}", "--address=127.0.0.1"],
                              # In the environment, not on the command line (ps shows that to everyone).
                              {"VTERM_ROLE": "flower", "FLOWER_BASIC_AUTH": self.flower_auth}))
        return procs

    def web_procs(self) -> list[Proc]:
        """"web" (and "web-2", ... when there are several: each binds the port with SO_REUSEPORT, and
        their django-prometheus series are merged from files, PROMETHEUS_MULTIPROC_DIR)."""
        app = "vterm_project.asgi:application"
        if self.web_processes <= 1:
            return [Proc("web", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), app])]
        env = {"PROMETHEUS_MULTIPROC_DIR": str(self.prometheus_dir())}
        return [Proc("web" if i == 1 else f"web-{i}",
                     [str(BIN / "python"), "-m", "vterm_project.web_listen", "127.0.0.1", str(self.port), app], env)
                for i in range(1, self.web_processes + 1)]

    def prometheus_dir(self) -> Path:
        return self.data_dir / "prometheus"

    def prometheus_dir_reset(self) -> None:
        """The web processes' metric files start empty with the stack (prometheus_client's rule)."""
        shutil.rmtree(self.prometheus_dir(), ignore_errors=True)
        if self.web_processes > 1:
            self.prometheus_dir().mkdir(parents=True, mode=0o700)

    def redis_conf(self) -> Path:
        """The private redis-server's configuration, written 0600: the password is in it, not on
        a command line that any user of the machine can read (ps, /proc/<pid>/cmdline)."""
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        redis_dir.chmod(0o700)  # its AOF holds the sessions' output
        conf = redis_dir / "redis.conf"
        write_private(conf, "\n".join([
            "# Written by vterm_project/devstack.py at every start; edits are lost.",
            f"port {self.redis_port}", "bind 127.0.0.1", f'dir "{redis_dir}"',
            "appendonly yes", 'save ""', "maxmemory-policy noeviction",  # Celery must never lose a key
            f"requirepass {self.redis_password}", ""]))
        return conf

    def manage(self, *args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "python"), str(ROOT / "manage.py"), *args], env={**self.env(), **(env or {})},
                              cwd=ROOT, check=check, capture_output=True, text=True)


# `make run`'s web processes: two, so that the web is not held to one core (tests/bench/command_cost.py).
DEFAULT_WEB_PROCESSES = 2


def backend_argv(backend_id: str) -> list[str]:
    return [str(BIN / "python"), "-m", "celery", "-A", "vterm_project", "worker", "--pool=solo",
            "--loglevel=INFO", "-n", f"{backend_id}@%h", "-Q", "vterm.control", "--without-gossip"]


def beat_argv(schedule: str) -> list[str]:
    """Celery beat, embedded (-B) in a small worker of its own that consumes vterm.control.

    The periodic tasks (the pool reconcile, the autoscaler) go to vterm.control, which the
    backends consume too. This worker makes sure they run when every backend is dead: else
    nothing would declare the backends dead nor end their sessions and commands
    (docs/failover.md). VTERM_ROLE=control keeps it from becoming a backend
    (workers/celery_hooks.py).
    """
    return [str(BIN / "python"), "-m", "celery", "-A", "vterm_project", "worker", "-B", "--pool=solo",
            "--loglevel=WARNING", "-n", "control@%h", "-Q", "vterm.control", "--without-gossip",
            "--schedule", schedule]


class Stack:
    """The processes of a StackConfig, started in the background (tests, benchmark)."""

    def __init__(self, config: StackConfig, log_dir: Path | None = None) -> None:
        self.config = config
        self.log_dir = Path(log_dir or config.data_dir / "logs")
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{config.port}"

    def start(self, timeout: float = 60.0) -> Stack:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        specs = self.config.processes()
        redis_spec = [p for p in specs if p.name == "redis"]
        for p in redis_spec:
            self.start_process(p)
        if redis_spec:
            self._wait(lambda: redis_answers(self.config.redis_url), 20, "redis")
        self.config.manage("migrate", "--noinput", "-v0")
        self.config.prometheus_dir_reset()
        for p in specs:
            if p.name != "redis":
                self.start_process(p)
        self._wait(self.ready, timeout, "/readyz and every backend")
        return self

    def start_process(self, p: Proc) -> subprocess.Popen:
        log = open(self.log_dir / f"{p.name}.log", "ab")
        proc = subprocess.Popen(p.argv, env={**self.config.env(), **p.env}, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[p.name] = proc
        return proc

    def spec(self, name: str) -> Proc:
        return next(p for p in self.config.processes() if p.name == name)

    def ready(self) -> bool:
        try:
            import json

            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                body = json.loads(r.read())
            return body["checks"].get("backends", 0) >= self.config.backends
        except Exception:
            return False

    def token(self, username: str, staff: bool = False) -> str:
        args = ["create_api_token", username] + (["--staff"] if staff else [])
        return self.config.manage(*args).stdout.strip().splitlines()[-1]

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)

    def kill_tmux_servers(self) -> None:
        # Every backend's, including those the local scaler added; then what their sandboxes held.
        for sock in sorted((self.config.data_dir / "tmux").glob("*/tmux.sock")):
            if sock.exists():
                subprocess.run(["tmux", "-S", str(sock), "kill-server"], check=False, capture_output=True)
        subprocess.run([str(BIN / "python"), "-m", "workers.sandbox.cleanup", str(self.config.data_dir)],
                       cwd=ROOT, check=False, capture_output=True)

    def stop(self) -> None:
        for name in [n for n in self.procs if n != "redis"] + (["redis"] if "redis" in self.procs else []):
            self.stop_process(name)
        self.kill_tmux_servers()

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}")


def _admin_login(cfg: StackConfig, password: str) -> tuple[str, str]:
    """The admin user for `make run` (its password kept under the data dir) and a staff API token."""
    # The password goes in the environment, not on a command line (ps shows those to everyone).
    code = ("import os; from django.contrib.auth import get_user_model; U=get_user_model(); "
            "u,_=U.objects.get_or_create(username='admin'); u.is_staff=u.is_superuser=True; "
            "u.set_password(os.environ['VTERM_ADMIN_PASSWORD']); u.save()")
    cfg.manage("shell", "-c", code, env={"VTERM_ADMIN_PASSWORD": password})
    token = cfg.manage("create_api_token", "admin", "--staff").stdout.strip().splitlines()[-1]
    return "admin", token


@dataclass
class LocalSecrets:
    """What `make run` generates on its first start and keeps in the data dir, each file 0600."""

    secret_key: str  # Django's SECRET_KEY (never settings.py's development default)
    redis_password: str  # the private redis-server's requirepass
    flower_password: str  # Flower's login, user admin
    admin_password: str  # the Django admin user's

    FILES: ClassVar[dict[str, str]] = {"secret_key": "secret-key", "redis_password": "redis-password",
                                       "flower_password": "flower-password", "admin_password": "admin-password"}

    @classmethod
    def load(cls, data_dir: Path) -> LocalSecrets:
        return cls(**{name: read_or_make_secret(data_dir / file, 16 if name.endswith("password") else 50)
                      for name, file in cls.FILES.items()})


def stack_config_from_env(data_dir: Path, local: LocalSecrets) -> StackConfig:
    """`make run`'s stack: the environment's addresses and counts, with the generated secrets."""
    return StackConfig(
        data_dir=data_dir,
        port=int(os.environ.get("PORT", "8000")),
        backends=int(os.environ.get("VTERM_BACKENDS", "2")),
        redis_url=os.environ.get("REDIS_URL") or None,
        redis_port=int(os.environ.get("VTERM_REDIS_PORT", "6390")),
        redis_password=local.redis_password,
        database_url=os.environ.get("DATABASE_URL") or None,
        flower_port=int(os.environ.get("FLOWER_PORT", "5555")),
        flower_auth=f"admin:{local.flower_password}",
        web_processes=int(os.environ.get("VTERM_WEB_PROCESSES", str(DEFAULT_WEB_PROCESSES))),
        # A SECRET_KEY given in the environment wins; else the generated one.
        extra_env={"SECRET_KEY": os.environ.get("SECRET_KEY") or local.secret_key},
    )


def run_foreground() -> None:
    """`make run`: migrate, then every process under supervisord (restarted when it crashes) until Ctrl-C."""
    from .redis_config import target_from_env
    from .supervisor_conf import write_supervisor_conf

    parser = argparse.ArgumentParser(description=run_foreground.__doc__)
    parser.parse_args()
    data_dir = Path(os.environ.get("VTERM_DATA_DIR", ROOT / "var")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    local = LocalSecrets.load(data_dir)
    cfg = stack_config_from_env(data_dir, local)
    cfg.manage("migrate", "--noinput", "-v0")
    cfg.prometheus_dir_reset()
    user, token = _admin_login(cfg, local.admin_password)
    conf = write_supervisor_conf(cfg)
    redis_shown = target_from_env(cfg.env()).redacted()  # a given REDIS_URL's password is not printed either
    rel = os.path.relpath(data_dir, Path.cwd()) if data_dir.is_relative_to(Path.cwd()) else str(data_dir)
    print(f"""
vterm is starting:
  web       http://127.0.0.1:{cfg.port}/          (terminal page; admin at /admin/)
  API       http://127.0.0.1:{cfg.port}/api/v1/   (schema: /api/schema/docs/)
  Flower    http://127.0.0.1:{cfg.flower_port}/
  metrics   http://127.0.0.1:{cfg.port}/metrics
  Redis     {redis_shown}{'  (private, AOF under ' + rel + '/redis)' if cfg.private_redis else ''}
  admin login:  {user} / {local.admin_password}
  Flower login: {cfg.flower_auth.replace(":", " / ", 1)}
  API token:    {token}
  secrets:      {rel}/{{secret-key,redis-password,flower-password,admin-password}} (mode 0600)
  processes:    {BIN / "supervisorctl"} -c {rel}/supervisord.conf status
  try: curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
         -d '{{}}' http://127.0.0.1:{cfg.port}/api/v1/sessions/
Ctrl-C stops everything (the shells live on in their tmux servers).
""", flush=True)
    # supervisord takes this process' place (same pid, same terminal): Ctrl-C reaches it, and it
    # passes this environment on to every process.
    os.execve(str(BIN / "supervisord"), [str(BIN / "supervisord"), "-n", "-c", str(conf)], cfg.env())


if __name__ == "__main__":
    run_foreground()
