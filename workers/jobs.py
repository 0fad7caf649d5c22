"""Background jobs: processes a session runs beside its shell, not in its foreground.

A job starts with the shell's cwd and exported environment (given by the caller), as the
session's user, inside its sandbox: in the shell's namespaces (``nsenter`` through the shell's
bash) and in a cgroup of its own under the session's, so that the session's limits hold it and a
kill ends its whole tree however it detached (``setsid``, double forks). Without a sandbox
(VTERM_SANDBOX=off) it runs as the service in a process group of its own, which a kill ends with
the tree below it; a child that left both (``setsid`` and orphaned) escapes that kill.

A job ends when its main process does: what it left running is ended with it. Output (stdout
and stderr together) is decoded as UTF-8 and kept up to ``output_limit`` bytes.

Framework-free, like the tmux driver: it reports through a ``JobListener``.
"""

from __future__ import annotations

import codecs
import logging
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from .sandbox import Box

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
PID_WAIT = 5.0  # seconds the job's shell may take to say its pid (nsenter and setpriv before it)
DRAIN_AFTER_EXIT = 1.0  # seconds output is still read once the job and its group have ended
SHELL_END_GRACE = 1.0  # seconds a killed job's shell may take to exit when its PID namespace ends
# The job's shell says its pid on the given fd first (inside a sandbox, the pid the session sees),
# enters the cwd as the session's user (not as root, before the drop), then runs the command;
# ``eval`` keeps it one process.
JOB_SCRIPT = 'printf "%s\\n" "$$" >&{fd}; exec {fd}>&-; cd -- "$2" || exit 1; eval -- "$1"'


class JobError(RuntimeError):
    """A job that cannot be started (its shell is gone, its group cannot be made)."""


@dataclass
class JobEnd:
    job_id: str
    session: str
    status: str  # succeeded | failed | timed_out | killed | interrupted
    exit_code: int | None
    reason: str
    ended_at: float  # wall clock
    truncated: bool


class JobListener(Protocol):
    def job_output(self, job_id: str, text: str) -> None: ...
    def job_ended(self, end: JobEnd) -> None: ...


@dataclass
class _Job:
    id: str
    session: str
    proc: subprocess.Popen
    box: Box
    timeout: float | None
    deadline: float | None
    shell_pid: int | None = None  # the session's bash, whose PID namespace the job lives in
    stop: tuple[str, str] | None = None  # (status, reason) once it was asked to end
    size: int = 0
    truncated: bool = False
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    exited: threading.Event = field(default_factory=threading.Event)


class JobRunner:
    def __init__(self, listener: JobListener, *, sandbox, output_limit: int, bash: str = "/bin/bash") -> None:
        self.listener = listener
        self.sandbox = sandbox
        self.output_limit = output_limit
        self.bash = bash
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._tick_loop, name="vterm-jobs", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def start(self, job_id: str, session: str, command: str, *, box: Box, shell_pid: int | None, cwd: str,
              env: dict[str, str], timeout: float | None = None) -> int | None:
        """Start a job; its pid as the session sees it (None: it ended before saying it)."""
        dirs: list[str] = []
        pid_r, pid_w = os.pipe()
        script = JOB_SCRIPT.format(fd=pid_w)
        inner = [self.bash if not box.sandboxed else "/bin/bash", "-c", script, "vterm-job", command, cwd]
        if box.sandboxed:
            try:
                if not shell_pid:
                    raise JobError("the session's shell is not running")
                dirs = self.sandbox.job_create(session, job_id)
            except (OSError, JobError) as exc:
                os.close(pid_r)
                os.close(pid_w)
                if isinstance(exc, JobError):
                    raise
                raise JobError(f"the job's group could not be made: {exc}") from exc
            argv, popen_cwd = box.job_argv(inner, shell_pid=shell_pid, cgroup_dirs=dirs), "/"
        else:
            argv, popen_cwd = inner, cwd if os.path.isdir(cwd) else None
            if popen_cwd is None:
                os.close(pid_r)
                os.close(pid_w)
                raise JobError(f"cwd: no such directory on the backend: {cwd}")
        try:
            # A session of its own: the backend's signals (a terminal's Ctrl-C) do not reach it.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, cwd=popen_cwd, pass_fds=(pid_w,), start_new_session=True,
                                    close_fds=True)
        except OSError as exc:
            os.close(pid_r)
            self.sandbox.job_destroy(session, job_id)
            raise JobError(f"the job could not be started: {exc}") from exc
        finally:
            os.close(pid_w)
        now = time.monotonic()
        job = _Job(id=job_id, session=session, proc=proc, box=box, timeout=timeout,
                   deadline=now + timeout if timeout else None, shell_pid=shell_pid if box.sandboxed else None)
        with self._lock:
            self._jobs[job_id] = job
        pid = _read_pid(pid_r, PID_WAIT)
        reader = threading.Thread(target=self._read, args=(job,), name=f"vterm-job-out-{job_id[:8]}", daemon=True)
        reader.start()
        threading.Thread(target=self._wait, args=(job, reader), name=f"vterm-job-{job_id[:8]}", daemon=True).start()
        return pid

    def kill(self, job_id: str, status: str = "killed", reason: str = "killed") -> bool:
        """End a job and everything it started; False when no such job runs here."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if job.stop is None:
                job.stop = (status, reason)
        self._end_tree(job)
        return True

    def session_ended(self, session: str, reason: str) -> None:
        """The session's shell is gone: its jobs end with it (``interrupted``)."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.session == session]
        for job in jobs:
            self.kill(job.id, "interrupted", session_end_reason(reason))

    def running(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    # -- internals --------------------------------------------------------------------------

    def _end_tree(self, job: _Job) -> None:
        if job.box.sandboxed:
            if not self.sandbox.job_destroy(job.session, job.id):
                log.warning("job %s: processes left after the kill", job.id)
            return
        # Its process group, and the tree below its main process (children that made groups of their
        # own), while that pid is still its own (not yet reaped: a reaped pid may be another's).
        tree = []
        if job.proc.returncode is None:
            try:
                tree = psutil.Process(job.proc.pid).children(recursive=True)
            except psutil.Error:
                pass
        try:
            os.killpg(job.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree:
            try:
                p.kill()
            except psutil.Error:
                pass

    def _read(self, job: _Job) -> None:
        fd = job.proc.stdout.fileno()
        drain_until = None
        while True:
            if job.exited.is_set() and drain_until is None:
                drain_until = time.monotonic() + DRAIN_AFTER_EXIT
            if drain_until is not None and time.monotonic() > drain_until:
                break  # something outside the job's reach still holds its output open
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:
                break
            if not data:
                break
            self._emit(job, job.decoder.decode(data))
        self._emit(job, job.decoder.decode(b"", final=True))
        job.proc.stdout.close()

    def _emit(self, job: _Job, text: str) -> None:
        if not text or job.truncated:
            return
        raw = text.encode("utf-8")
        room = self.output_limit - job.size
        if len(raw) > room:
            job.truncated = True
            text = raw[:max(room, 0)].decode("utf-8", "ignore")  # cut on a character's edge
            raw = text.encode("utf-8")
        job.size += len(raw)
        if text:
            try:
                self.listener.job_output(job.id, text)
            except Exception:
                log.exception("job %s: output lost", job.id)

    def _wait(self, job: _Job, reader: threading.Thread) -> None:
        code = job.proc.wait()
        # The job is its main process: what it left running ends with it.
        self._end_tree(job)
        job.exited.set()
        reader.join()
        if job.stop is None and code < 0 and job.shell_pid and _gone_within(job, SHELL_END_GRACE):
            # Its shell's PID namespace ended (the session did) and the kernel killed it, before
            # the backend heard of the shell's end.
            job.stop = ("interrupted", session_end_reason(""))
        with self._lock:
            self._jobs.pop(job.id, None)
        exit_code = 128 - code if code < 0 else code  # killed by a signal: as a shell says it
        if job.stop is not None:
            status, reason = job.stop
        else:
            status, reason = ("succeeded" if exit_code == 0 else "failed"), ""
        try:
            self.listener.job_ended(JobEnd(job_id=job.id, session=job.session, status=status, exit_code=exit_code,
                                           reason=reason, ended_at=time.time(), truncated=job.truncated))
        except Exception:
            log.exception("job %s: its end was not recorded", job.id)

    def _tick_loop(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            with self._lock:
                due = [j for j in self._jobs.values() if j.deadline is not None and now >= j.deadline and j.stop is None]
            for job in due:
                self.kill(job.id, "timed_out", f"timed out after {job.timeout:g} s")


def session_end_reason(reason: str) -> str:
    """Why a job ended with its session (``reason``: the session's own, if any)."""
    return "the session ended" if reason in ("", "the session ended") else f"the session ended ({reason})"


def _gone_within(job: _Job, seconds: float) -> bool:
    """Whether the job's shell is gone, or the backend ends the job, within ``seconds``. When the
    kernel empties a PID namespace it signals every process in it at once: the job may be reaped
    while its shell is still exiting, so its shell is given a moment."""
    deadline = time.monotonic() + seconds
    while job.stop is None and _running(job.shell_pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return job.stop is None


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _read_pid(fd: int, timeout: float) -> int | None:
    """The pid the job's shell wrote on its pipe; None when it closed it without (it failed to start)."""
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return None
            buf += chunk
    finally:
        os.close(fd)
    line = buf.split(b"\n", 1)[0].strip()
    return int(line) if line.isdigit() else None

