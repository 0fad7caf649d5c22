"""The stack's processes and their configuration: what devstack.py starts (tests, benchmark) and
supervisor_conf.py writes for supervisord (`make run`), apart so that both import it and not each other.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
