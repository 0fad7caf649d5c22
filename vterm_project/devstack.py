"""The whole stack on one machine, for `make run`, the tests and the benchmark.

One list of processes (web, backend workers, beat in a control worker of its own, Flower,
and a private Redis when no REDIS_URL is given) is either run by supervisord in the foreground
(`make run`: vterm_project/supervisor_conf.py; it restarts what crashes) or started in the
background by ``Stack`` (tests, benchmark). Same commands either way.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from workers.tmux.pool import all_server_sockets

# The stack's pieces, here too for their users (tests, local_scaler, bench).
from .stack_config import (  # noqa: F401
    BIN,
    DEFAULT_WEB_PROCESSES,
    ROOT,
    Proc,
    StackConfig,
    backend_argv,
    beat_argv,
    read_or_make_secret,
    write_private,
)


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
        for sock in all_server_sockets(self.config.data_dir):
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
