"""The autoscaler's local executor (`make run`): backend worker processes follow the desired count.

It watches ``vterm:pool:desired`` (written by the autoscaler's beat task) and starts or stops
`celery worker` processes with new VTERM_BACKEND_IDs next to the ones the stack started, which it
never touches. A new backend registers with its first heartbeat and takes sessions at once (the
pool places on the least-loaded backend). Scale-down drains first: the backend stops taking
sessions and moves its own (sessions.failover.backend_drain); only once it holds no live session,
or after ``drain_timeout``, is the process stopped and its record retired.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from .devstack import ROOT, backend_argv
from .parent_death import dies_with_this_process

log = logging.getLogger("vterm.local_scaler")


@dataclass
class Managed:
    backend_id: str
    proc: subprocess.Popen
    draining_since: float | None = None


@dataclass
class LocalScaler:
    prefix: str
    base_backends: int  # backend ids <prefix>-1..N belong to the stack, not to us
    log_dir: Path
    env: dict[str, str]
    poll: float = 1.0
    drain_timeout: float = 120.0
    managed: dict[str, Managed] = field(default_factory=dict)
    _stop: bool = False

    # -- decisions -----------------------------------------------------------------------

    def running(self) -> list[Managed]:
        return [m for m in self.managed.values() if m.draining_since is None]

    def step(self) -> None:
        """Reap, then move one step toward the desired count."""
        from sessions.pool import BackendPool

        self._reap()
        desired = BackendPool.desired_backends()
        if desired is None:
            return
        current = self.base_backends + len(self.running())
        if desired > current:
            for _ in range(desired - current):
                self._spawn()
        elif (desired < current and self.running()
              and not any(m.draining_since is not None for m in self.managed.values())):
            # One at a time, the highest number first (as a StatefulSet does).
            victim = max(self.running(), key=lambda m: self._number(m.backend_id))
            self._drain(victim)
        self._finish_drains()

    # -- actions -------------------------------------------------------------------------

    def _number(self, backend_id: str) -> int:
        return int(backend_id.rsplit("-", 1)[1])

    def _spawn(self) -> Managed:
        used = {self._number(b) for b in self.managed}
        n = next(k for k in range(self.base_backends + 1, 10_000) if k not in used)
        bid = f"{self.prefix}-{n}"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "VTERM_BACKEND_ID": bid, "VTERM_ROLE": "backend"}
        with open(self.log_dir / f"{bid}.log", "ab") as out:
            # Same process group as this scaler: stopping the scaler's group stops them too; and
            # a scaler killed outright takes them with it (its successor starts them again).
            proc = subprocess.Popen(backend_argv(bid), env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=dies_with_this_process())  # noqa: PLW1509 (one prctl, libc loaded before)
        self.managed[bid] = Managed(bid, proc)
        log.warning("scale up: started backend %s (pid %d)", bid, proc.pid)
        return self.managed[bid]

    def _drain(self, m: Managed) -> None:
        from sessions.models import Backend

        m.draining_since = time.monotonic()
        backend = Backend.objects.filter(pk=m.backend_id).first()
        if backend is None:
            return  # never registered: nothing to move
        try:
            from sessions.failover import backend_drain
        except ImportError:
            # Without failover's drain: stop placing there and let its sessions end.
            Backend.objects.filter(pk=m.backend_id).update(status=Backend.Status.DRAINING)
            log.warning("scale down: %s marked draining (sessions.failover.backend_drain unavailable)", m.backend_id)
            return
        backend_drain(backend, by="autoscaler scale-down")
        log.warning("scale down: draining backend %s", m.backend_id)

    def _finish_drains(self) -> None:
        from sessions.models import TerminalSession
        from sessions.pool import backend_retire

        for m in [m for m in self.managed.values() if m.draining_since is not None]:
            live = TerminalSession.objects.filter(backend_id=m.backend_id, status__in=TerminalSession.LIVE).count()
            waited = time.monotonic() - m.draining_since
            if live and waited < self.drain_timeout:
                continue
            self._terminate(m)
            retired = backend_retire(m.backend_id)
            log.warning("scale down: stopped backend %s after %.1f s (%d live session(s) left, record %s)",
                        m.backend_id, waited, live, "retired" if retired else "kept")
            del self.managed[m.backend_id]

    def _terminate(self, m: Managed, timeout: float = 30.0) -> None:
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            try:
                m.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(5)

    def _reap(self) -> None:
        for bid, m in list(self.managed.items()):
            if m.draining_since is None and m.proc.poll() is not None:
                log.warning("backend %s exited by itself (code %s)", bid, m.proc.returncode)
                del self.managed[bid]

    # -- loop ----------------------------------------------------------------------------

    def stop(self, *_args) -> None:
        self._stop = True

    def run_forever(self) -> None:
        from django.db import close_old_connections

        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            while not self._stop:
                try:
                    self.step()
                except Exception:
                    log.exception("local scaler step failed")
                    close_old_connections()
                time.sleep(self.poll)
        finally:
            for m in list(self.managed.values()):
                self._terminate(m)
