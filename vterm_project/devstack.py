"""The whole stack on one machine, for `make run`, the tests and the benchmark.

One list of processes (web, backend workers, beat in a control worker of its own, Flower,
and a private Redis when no REDIS_URL is given) is either handed to honcho in the foreground
(`make run`) or started in the background by ``Stack`` (tests, benchmark). Same commands
either way.
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


@dataclass
class StackConfig:
    data_dir: Path
    port: int = 8000
    backends: int = 2
    redis_url: str | None = None  # None: start a private redis-server with AOF under data_dir
    redis_port: int = 6390
    database_url: str | None = None  # None: SQLite under data_dir
    flower_port: int | None = 5555
    beat: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    backend_prefix: str = "backend"
    # The autoscaler's local executor (vterm_project/local_scaler.py); runs only with beat.
    scaler: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        if self.redis_url is None:
            self.private_redis = True
            self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        else:
            self.private_redis = False

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
            redis_dir = self.data_dir / "redis"
            redis_dir.mkdir(parents=True, exist_ok=True)
            procs.append(Proc("redis", [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port),
                                        "--bind", "127.0.0.1", "--dir", str(redis_dir), "--appendonly", "yes",
                                        "--save", "", "--maxmemory-policy", "noeviction"]))
        procs.append(Proc("web", [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port),
                                  "vterm_project.asgi:application"]))
        for bid in self.backend_ids():
            procs.append(Proc(bid, backend_argv(bid), {"VTERM_BACKEND_ID": bid}))
        if self.beat:
            procs.append(Proc("beat", beat_argv(str(self.data_dir / "celerybeat-schedule")), {"VTERM_ROLE": "control"}))
        if self.beat and self.scaler:
            procs.append(Proc("scaler", [py, str(ROOT / "manage.py"), "vterm_local_scaler", "--prefix",
                                         self.backend_prefix, "--base", str(self.backends)],
                              {"VTERM_ROLE": "scaler"}))
        if self.flower_port:
            procs.append(Proc("flower", [py, "-m", "celery", "-A", "vterm_project", "flower",
                                         f"--port={self.flower_port}", "--address=127.0.0.1"],
                              {"VTERM_ROLE": "flower"}))
        return procs

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "python"), str(ROOT / "manage.py"), *args], env=self.env(), cwd=ROOT,
                              check=check, capture_output=True, text=True)


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
        # Every backend's, including those the local scaler added.
        for sock in sorted((self.config.data_dir / "tmux").glob("*/tmux.sock")):
            if sock.exists():
                subprocess.run(["tmux", "-S", str(sock), "kill-server"], check=False, capture_output=True)

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


def _admin_login(cfg: StackConfig) -> tuple[str, str, str]:
    """An admin user for `make run`: its password is made once and kept under the data dir."""
    pw_file = cfg.data_dir / "admin-password"
    if not pw_file.exists():
        pw_file.write_text(secrets.token_urlsafe(12))
        pw_file.chmod(0o600)
    password = pw_file.read_text().strip()
    code = ("from django.contrib.auth import get_user_model; U=get_user_model(); "
            "u,_=U.objects.get_or_create(username='admin'); u.is_staff=u.is_superuser=True; "
            f"u.set_password({password!r}); u.save()")
    cfg.manage("shell", "-c", code)
    token = cfg.manage("create_api_token", "admin", "--staff").stdout.strip().splitlines()[-1]
    return "admin", password, token


def run_foreground() -> None:
    """`make run`: migrate, then every process under honcho until Ctrl-C."""
    from honcho.manager import Manager

    parser = argparse.ArgumentParser(description=run_foreground.__doc__)
    parser.parse_args()
    cfg = StackConfig(
        data_dir=Path(os.environ.get("VTERM_DATA_DIR", ROOT / "var")),
        port=int(os.environ.get("PORT", 8000)),
        backends=int(os.environ.get("VTERM_BACKENDS", 2)),
        redis_url=os.environ.get("REDIS_URL") or None,
        redis_port=int(os.environ.get("VTERM_REDIS_PORT", 6390)),
        database_url=os.environ.get("DATABASE_URL") or None,
        flower_port=int(os.environ.get("FLOWER_PORT", 5555)),
    )
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.manage("migrate", "--noinput", "-v0")
    user, password, token = _admin_login(cfg)
    print(f"""
vterm is starting:
  web       http://127.0.0.1:{cfg.port}/          (terminal page; admin at /admin/)
  API       http://127.0.0.1:{cfg.port}/api/v1/   (schema: /api/schema/docs/)
  Flower    http://127.0.0.1:{cfg.flower_port}/
  metrics   http://127.0.0.1:{cfg.port}/metrics
  Redis     {cfg.redis_url}{'  (private, AOF under ' + str(cfg.data_dir / 'redis') + ')' if cfg.private_redis else ''}
  admin login: {user} / {password}
  API token:   {token}
  try: curl -s -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
         -d '{{}}' http://127.0.0.1:{cfg.port}/api/v1/sessions/
Ctrl-C stops everything.
""", flush=True)
    manager = Manager()
    base_env = cfg.env()
    for p in cfg.processes():
        manager.add_process(p.name, " ".join(_shell_quote(a) for a in p.argv), env={**base_env, **p.env}, cwd=str(ROOT))
    manager.loop()
    sys.exit(manager.returncode)


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


if __name__ == "__main__":
    run_foreground()
