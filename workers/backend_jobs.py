"""A backend's background jobs: the job runner (workers/jobs.py) wired to the session's shell,
the database and Redis (sessions/jobs.py)."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import close_old_connections

from sessions import jobs as job_services

from .jobs import JobEnd, JobError, JobRunner
from .tmux.driver import ShellError

if TYPE_CHECKING:
    from .runtime_parts import RuntimeParts

log = logging.getLogger(__name__)

ENV_READ_TIMEOUT = 2.0  # seconds an idle shell may take to say its environment
RECORD_WAIT = 30.0  # seconds a job's end waits for its start to be recorded


class BackendJobs:
    """The job runner's listener: output to Redis as it comes, each end to the database in turn."""

    def __init__(self, parts: RuntimeParts) -> None:
        self.parts = parts
        self.runner = JobRunner(self, sandbox=parts.driver.sandbox, output_limit=settings.VTERM["OUTPUT_LIMIT"],
                                bash=parts.driver.bash)
        self._recorded: dict[str, threading.Event] = {}

    def start(self, job_id: str) -> dict:
        """Start a job the web recorded, with the shell's cwd and environment; the reply to the web."""
        close_old_connections()
        ctx = job_services.job_start_context(job_id)
        if ctx is None:
            return {"ok": False, "error": "the job ended before it started"}
        sid = ctx["session"]
        driver = self.parts.driver
        try:
            box, shell_pid, cwd = driver.job_context(sid)
        except ShellError:
            return self._not_started(job_id, f"the session's shell is not on backend {self.parts.backend_id}")
        # The shell's environment now when it is idle; when it is busy, as last read from it.
        live = driver.capture_env([sid], timeout=ENV_READ_TIMEOUT).get(sid)
        env = {**driver.shell_env, **box.env(), **(live if live is not None else ctx["env"])}
        recorded = self._recorded[job_id] = threading.Event()
        try:
            pid = self.runner.start(job_id, sid, ctx["command"], box=box, shell_pid=shell_pid, cwd=cwd, env=env,
                                    timeout=ctx["timeout"])
        except JobError as exc:
            self._recorded.pop(job_id, None)
            return self._not_started(job_id, str(exc))
        try:
            started = job_services.job_started(job_id=job_id, pid=pid, cwd=cwd)
        finally:
            recorded.set()
        if not started:  # the web gave up on it meanwhile
            self.runner.kill(job_id, "interrupted", "its start came too late")
            return {"ok": False, "error": "its start came too late"}
        return {"ok": True, "pid": pid}

    def _not_started(self, job_id: str, error: str) -> dict:
        job_services.job_ended(job_id=job_id, status="interrupted", exit_code=None, reason=f"not started: {error}",
                               ended_at=datetime.now(UTC), truncated=False)
        return {"ok": False, "error": error}

    def kill(self, job_id: str) -> None:
        if not self.runner.kill(job_id, "killed", "killed by request"):
            log.info("kill of job %s: it does not run here", job_id)

    # -- the runner's listener ---------------------------------------------------------------

    def job_output(self, job_id: str, text: str) -> None:
        job_services.job_output_append(job_id, text)

    def job_ended(self, end: JobEnd) -> None:
        recorded = self._recorded.pop(end.job_id, None)
        if recorded is not None:
            recorded.wait(RECORD_WAIT)  # a quick job's end is written after its start
        ended_at = datetime.fromtimestamp(end.ended_at, tz=UTC)
        self.parts.write(lambda: job_services.job_ended(job_id=end.job_id, status=end.status, exit_code=end.exit_code,
                                                        reason=end.reason, ended_at=ended_at, truncated=end.truncated))
