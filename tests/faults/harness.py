"""Fault injection against real processes: a stack of its own, faults, and what they left behind.

Each scenario injects one fault into a live stack (Daphne, Celery backend workers, tmux,
Redis, beat), then waits until every command it got a 201 for has ended and reports a
``Outcome``: sessions recovered, commands acknowledged / lost / interrupted, and the
time from the fault until the stack served again. Tests assert on it; ``report.py``
runs each scenario N times and prints the table.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import httpx

from tests.conftest import Api, make_stack
from vterm_project.devstack import Stack, free_port, redis_answers
from workers.tmux.pool import server_sockets

FINAL = {"succeeded", "failed", "timed_out", "interrupted"}


@dataclass
class Outcome:
    fault: str
    sessions: int = 0
    recovered: int = 0
    acknowledged: int = 0
    lost: int = 0  # acknowledged, then never ended (still queued/running at the deadline) or gone
    interrupted: int = 0
    recover_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    commands: list[dict] = field(default_factory=list)
    replies: list[tuple] = field(default_factory=list)  # (status or error, Retry-After, seconds, body)
    seen: dict = field(default_factory=dict)  # what a scenario read back, for its test to check


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = predicate()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class PrivateRedis:
    """A redis-server of the test's own (with AOF, as `make run` runs it), to restart or pause."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--maxmemory-policy", "noeviction"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: redis_answers(self.url), 20, "redis to start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(20)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


# What FaultStack shortens unless a test asks for vterm's own defaults (``at_defaults=True``): a
# loss seen in seconds. Tests of these behaviours themselves run at the defaults.
QUICK = {"VTERM_HEARTBEAT_TTL": 4, "VTERM_POOL_START_GRACE": 0, "VTERM_RECONCILE_INTERVAL": 1,
         "VTERM_MIGRATE_TIMEOUT": 20, "VTERM_ORPHAN_INTERVAL": 5, "VTERM_DRAIN_GRACE": 3}


def settle_commands(api, acked: list[dict], timeout: float = 90) -> list[dict | None]:
    """Each acknowledged command once final (a 404: status "missing"); None if not by the deadline."""
    end = time.monotonic() + timeout
    done: dict[str, dict] = {}
    while time.monotonic() < end and len(done) < len(acked):
        for c in acked:
            if c["id"] in done:
                continue
            try:
                r = api.http.get(f"/api/v1/sessions/{c['session']}/commands/{c['id']}/", timeout=10)
            except httpx.HTTPError:
                continue
            if r.status_code == 404 or (r.status_code == 200 and r.json()["status"] in FINAL):
                done[c["id"]] = r.json() if r.status_code == 200 else {**c, "status": "missing"}
        time.sleep(0.1)
    return [done.get(c["id"]) for c in acked]


class FaultStack:
    """A stack for one test module (or one report run): its own processes, ids and tmux servers."""

    def __init__(self, redis_url: str, tmp: Path, *, prefix: str, backends: int = 2, at_defaults: bool = False,
                 **env) -> None:
        # A key prefix of its own: its beat's tasks and its queues must not reach other stacks
        # sharing the test Redis database (vterm.control is one queue name for all). No autoscaler
        # runs (it would start and stop backends under the test).
        base = {"VTERM_REDIS_PREFIX": f"{prefix}:", "VTERM_AUTOSCALE_INTERVAL": 3600}
        # make_stack heartbeats every second; at the defaults, every 2 s as vterm does.
        timing = {"VTERM_HEARTBEAT_INTERVAL": 2} if at_defaults else QUICK
        self.stack: Stack = make_stack(redis_url, tmp, backends=backends, prefix=prefix,
                                       **{**base, **timing, **env})
        self.stack.config.beat = True  # the reconcile runs from beat
        if hasattr(self.stack.config, "scaler"):
            self.stack.config.scaler = False  # no autoscaler executor starting or stopping backends here
        self.tmp = tmp

    def start(self) -> FaultStack:
        self.stack.start()
        self.api = Api(self.stack.url, self.stack.token("faults"))
        self.staff = Api(self.stack.url, self.stack.token("faults-ops", staff=True))
        return self

    def stop(self) -> None:
        self.stack.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()  # what did start is stopped too
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- processes --------------------------------------------------------------

    def backend_ids(self) -> list[str]:
        return self.stack.config.backend_ids()

    def tmux_sockets(self, backend_id: str) -> list[Path]:
        """Every tmux server's socket of a backend (workers/tmux/pool.py)."""
        return server_sockets(self.stack.config.data_dir / "tmux" / backend_id)

    def tmux_windows(self, backend_id: str) -> list[str]:
        names = []
        for sock in self.tmux_sockets(backend_id):
            out = subprocess.run(["tmux", "-S", str(sock), "list-windows", "-a", "-F", "#{window_name}"],
                                 capture_output=True, text=True, check=False)
            names += [w.removeprefix("vt-") for w in out.stdout.split() if w.startswith("vt-")]
        return names

    def kill_tmux(self, backend_id: str) -> None:
        """Every tmux server of the backend (its shells all live in the first while there are few)."""
        for sock in self.tmux_sockets(backend_id):
            subprocess.run(["tmux", "-S", str(sock), "kill-server"], capture_output=True, check=False)

    def worker_starts(self, backend_id: str) -> int:
        log = self.stack.log_dir / f"{backend_id}.log"
        return log.read_text(errors="replace").count(f"backend {backend_id} up:") if log.exists() else 0

    def restart_worker(self, backend_id: str) -> None:
        before = self.worker_starts(backend_id)
        self.stack.start_process(self.stack.spec(backend_id))
        wait_for(lambda: self.worker_starts(backend_id) > before, 90, f"worker {backend_id} to come up")

    def processes_alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.stack.procs.items()}

    # -- the database, read directly (SQLite in the data dir: no Django start per look) ------------

    def db_rows(self, sql: str, *params) -> list[tuple]:
        path = self.stack.config.data_dir / "vterm.sqlite3"
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def backends_in_db(self) -> dict[str, tuple[str, float]]:
        """Each backend's status and the age in seconds of its last heartbeat, as the reconcile reads them."""
        now = time.time()
        return {bid: (status, now - datetime.fromisoformat(beat).replace(tzinfo=UTC).timestamp() if beat else -1.0)
                for bid, status, beat in self.db_rows("SELECT id, status, last_heartbeat FROM vterm_sessions_backend")}

    def session_epoch(self, sid: str) -> int:
        return self.db_rows("SELECT epoch FROM vterm_sessions_terminalsession WHERE id = ?", sid.replace("-", ""))[0][0]

    def session_events(self, sid: str) -> list[tuple[str, str, str]]:
        """The session's status changes, oldest first: (status, reason, backend)."""
        return self.db_rows("SELECT status, reason, backend FROM vterm_sessions_sessionevent WHERE session_id = ? "
                            "ORDER BY at, id", sid.replace("-", ""))

    def django(self, code: str) -> str:
        """Run ``code`` in the stack's Django (manage.py shell); the last line it printed."""
        out = self.stack.config.manage("shell", "-c", code)
        return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""

    def record_without_handoff(self, sid: str, command: str) -> str:
        """A command's row as the API records it (sessions/services.py), without its hand-off to the
        backend: what a lost RPUSH leaves. Its id."""
        return self.django(
            "from django.db import transaction\n"
            "from sessions import services\n"
            "from sessions.models import Command\n"
            "with transaction.atomic():\n"
            f"    seq, *_ = services._session_next_seq({sid!r}, None)\n"
            f"    cmd = Command.objects.create(session_id={sid!r}, seq=seq, command={command!r})\n"
            "print(cmd.pk)\n")

    def hand_off(self, cid: str, *, epoch: int) -> None:
        """Push a recorded command's ``run`` message onto its session's backend's inbox as the web does
        (sessions/services.py _command_send), with ``epoch`` as the placement it names."""
        self.django(
            "from sessions.models import Command\n"
            "from sessions.replies import push_to_backend\n"
            f"c = Command.objects.select_related('session').get(pk={cid!r})\n"
            "push_to_backend(c.session.backend_id, 'run', id=str(c.pk), session=str(c.session_id), "
            f"epoch={epoch}, command=c.command, timeout=c.timeout, seq=c.seq, "
            "submitted_at=c.submitted_at.isoformat())\n"
            "print('pushed')\n")

    def readyz(self) -> tuple[int, dict]:
        r = httpx.get(self.stack.url + "/readyz", timeout=30)
        return r.status_code, r.json()

    # -- the API ------------------------------------------------------------------

    def backends_healthy(self, ids: list[str] | None = None) -> bool:
        """These backends (default: all of the stack's) registered and healthy, so placement reaches them."""
        listed = {b["id"]: b["status"] for b in self.staff.http.get("/api/v1/backends/").json()}
        return all(listed.get(b) == "healthy" for b in (ids or self.backend_ids()))

    def all_backends_healthy(self) -> bool:
        return self.backends_healthy()

    def session_on(self, backend_id: str, **body) -> dict:
        """A new session placed on ``backend_id`` (placement is least-loaded: others go elsewhere)."""
        # A backend just restarted by the case before may not have registered again yet.
        wait_for(lambda: self.backends_healthy([backend_id]), 60, f"backend {backend_id} healthy")
        made = []
        # Earlier cases may have left sessions on the other backends (moved there): enough tries to even out.
        for _ in range(50):
            s = self.api.create_session(**body)
            if s["backend"] == backend_id:
                for other in made:
                    self.api.http.delete(f"/api/v1/sessions/{other['id']}/")
                return s
            made.append(s)
        raise AssertionError(f"no session landed on {backend_id}")

    def submit(self, sid: str, command: str, **extra) -> dict | None:
        """Submit without waiting; the command if it was acknowledged (201), else None."""
        try:
            r = self.api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": command, **extra},
                                   timeout=30)
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 201 else None

    def wait_live_env(self, sid: str, name: str, timeout: float = 60) -> None:
        """Until the session's stored environment (read from its shell after an export) has ``name``."""
        code = ("import json; from sessions.models import TerminalSession as T; "
                f"print(json.dumps(T.objects.get(pk='{sid}').live_env))")
        wait_for(lambda: name in (json.loads(self.stack.config.manage("shell", "-c", code).stdout.strip()
                                             .splitlines()[-1]) or {}),
                 timeout, f"the environment of {sid} with {name} to be stored")

    def session(self, sid: str) -> dict:
        return self.api.http.get(f"/api/v1/sessions/{sid}/").json()

    def command(self, sid: str, cid: str) -> dict:
        return self.api.http.get(f"/api/v1/sessions/{sid}/commands/{cid}/").json()

    def wait_running(self, sid: str, cid: str, timeout: float = 30) -> dict:
        return wait_for(lambda: (c := self.command(sid, cid))["status"] == "running" and c, timeout,
                        f"command {cid} to run")

    def settle(self, acked: list[dict], timeout: float = 90) -> list[dict]:
        """Every acknowledged command as it ends (or as it stands at the deadline)."""
        ended = settle_commands(self.api, acked, timeout)
        return [e or self.command(c["session"], c["id"]) for c, e in zip(acked, ended)]

    def wait_session_active(self, sid: str, timeout: float = 60, not_on: str | None = None) -> dict:
        def ok():
            s = self.session(sid)
            return s["status"] == "active" and (not_on is None or s["backend"] != not_on) and s
        return wait_for(ok, timeout, f"session {sid} active again")


def tally(outcome: Outcome, ended: list[dict]) -> Outcome:
    outcome.acknowledged += len(ended)
    for c in ended:
        if c["status"] not in FINAL:
            outcome.lost += 1
        elif c["status"] == "interrupted":
            outcome.interrupted += 1
    outcome.commands += ended
    return outcome


def run_load(fs: FaultStack, sids: list[str], stop: threading.Event, acked: list[dict], errors: list[str]) -> None:
    """Submit short commands round-robin until ``stop``; keep what was acknowledged."""
    i = 0
    while not stop.is_set():
        sid = sids[i % len(sids)]
        try:
            r = fs.api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": f"echo load-{i}"},
                                 timeout=15)
            if r.status_code == 201:
                acked.append(r.json())
            else:
                errors.append(str(r.status_code))
        except httpx.HTTPError as exc:
            errors.append(exc.__class__.__name__)
            time.sleep(0.05)
        i += 1
