"""The backend runtime: one per worker process, owning its tmux servers (workers/tmux/pool.py).

It wires the framework-free tmux driver to the rest of vterm: results go to the
database through one writer thread (in order, off the driver's reader thread),
output goes to a numbered Redis stream and the channel layer (at once when the
output was idle, in batches while it flows), and a heartbeat says the backend is alive.
"""

from __future__ import annotations

import asyncio
import codecs
import functools
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Callable

from django.conf import settings
from django.db import close_old_connections
from django.db import connection as db_connection

from sessions import jobs as job_services
from sessions import sandbox as sandbox_services
from sessions import services
from sessions.broadcast import ViewerSender, install_submitter, session_broadcast
from sessions.metrics import record_output_bytes
from sessions.redis_state import backend_stats_key, output_stream_key, sync_client
from vterm_project import hop_trace

from . import failover_runtime
from .backend_jobs import BackendJobs
from .backend_stats import StatsSampler
from .command_ledger import CommandLedger
from .env_tracker import EnvTracker
from .handoff_check import HandoffCheck
from .inbox import InboxThread
from .keyed_locks import KeyedLocks
from .output_frames import FloodPacer, StreamBudget, frame_pieces
from .resource_usage import ResourceUsageThread
from .routing import local_backend_id
from .runtime_parts import RuntimeParts
from .sandbox import NoSandbox, Sandbox, SandboxSpec
from .tmux.driver import CommandResult
from .tmux.pool import TmuxPool
from .tmux.shell import clean_output

log = logging.getLogger(__name__)

STARTED_WRITE_DELAY = 0.05  # seconds a command runs before its `running` state is written
OUTPUT_POLL = 1.0  # seconds the output thread sleeps with nothing to do (it is woken for work)
KNOWN_MAX = 50_000
END_BATCH_MAX = 64  # command ends written in one transaction, at most


@dataclass
class _CommandEnd:
    """A command's end for the writer thread: services.commands_finished's arguments."""
    fields: dict


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=dt_timezone.utc) if ts is not None else None


def shell_base_env() -> dict[str, str]:
    """A shell's environment is built from nothing: no secret of the service reaches it."""
    home = os.environ.get("HOME", "/root")
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "vterm"
    return {
        "PATH": settings.VTERM["SHELL_PATH"],
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
    }


class BackendRuntime:
    def __init__(self, backend_id: str | None = None) -> None:
        self.backend_id = backend_id or local_backend_id()
        self.ledger = CommandLedger()
        self.recover_lock = threading.Lock()
        self._session_locks = KeyedLocks()
        # All that the inbox, the hand-off check, the environment tracker, the jobs and the failover
        # steps may touch of this runtime (workers/runtime_parts.py).
        self.parts = RuntimeParts(backend_id=self.backend_id, driver=self.make_driver(), ledger=self.ledger,
                                  session_lock=self.session_lock, write=self.write,
                                  flush_writes=self.flush_writes, remember_command=self.remember_command,
                                  command_lost=self.command_lost)
        self.stopping = False
        self._writes: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._finished: set[str] = set()
        self._starting: dict[str, tuple[str, float, float]] = {}  # command id -> (shell, started, write after)
        self._known: OrderedDict[str, dict] = OrderedDict()  # command id -> what its inbox message said
        self._out_lock = threading.Lock()
        self._out: dict[str, bytearray] = defaultdict(bytearray)
        self._pacer = FloodPacer(interval=settings.VTERM["OUTPUT_FLUSH_INTERVAL"],
                                 flood_bytes=settings.VTERM["OUTPUT_FLOOD_BYTES"],
                                 flood_wait=settings.VTERM["OUTPUT_FLOOD_WAIT"],
                                 frame_max=settings.VTERM["OUTPUT_FRAME_MAX"])
        self._wake = threading.Event()  # output to send, a command's start to write, or stop
        self._seq: dict[str, int] = {}
        self._stream_budgets = defaultdict(lambda: StreamBudget(settings.VTERM["STREAM_MAX_CHARS"]))
        self._decoders = defaultdict(lambda: codecs.getincrementaldecoder("utf-8")("replace"))
        self._stop = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self._usage: ResourceUsageThread | None = None
        # Shell starts wait for the new shell's first prompt (up to the driver's timeout): off the
        # worker's one Celery thread, so that a start which hangs (a user's rc or history file
        # that blocks) delays no other session's start, stop or move.
        self._starts = ThreadPoolExecutor(max_workers=settings.VTERM["START_THREADS"], thread_name_prefix="vterm-start")
        self.env_tracker = EnvTracker(self.parts, self._stop)
        self.jobs = BackendJobs(self.parts)

    @property
    def driver(self) -> TmuxPool:
        """The backend's tmux servers, behind the driver interface (workers/tmux/pool.py)."""
        return self.parts.driver

    # -- lifecycle ------------------------------------------------------------

    def make_driver(self) -> TmuxPool:
        data_dir = os.path.join(str(settings.DATA_DIR), "tmux", self.backend_id)
        sandbox = None
        if settings.VTERM["SANDBOX"] == "on":
            sandbox = Sandbox(backend_id=self.backend_id, state_dir=os.path.join(data_dir, "sandbox"),
                              rc_host=os.path.join(data_dir, "vterm.bashrc"),
                              network=settings.VTERM["SANDBOX_NETWORK"],
                              cgroup_parent=settings.VTERM["SANDBOX_CGROUP_PARENT"],
                              bwrap=settings.VTERM["SANDBOX_BWRAP"])
        return TmuxPool(
            data_dir,
            listener=self,
            per_server=settings.VTERM["TMUX_WINDOWS_PER_SERVER"],
            shell_env=shell_base_env(),
            output_limit=settings.VTERM["OUTPUT_LIMIT"],
            source_user_bashrc=settings.VTERM["SOURCE_USER_BASHRC"],
            sandbox=sandbox,
        )

    def sandbox_spec(self, session_id: str, given: dict | None = None) -> SandboxSpec | None:
        """Who the session's shell runs as, within what limits (None: shells are not sandboxed).
        ``given``: as the web sent it with a new session's start (else read from the database)."""
        if isinstance(self.driver.sandbox, NoSandbox):
            return None
        if given:
            return SandboxSpec(**given)
        close_old_connections()
        return SandboxSpec(**sandbox_services.session_sandbox_spec(session_id))

    def start(self) -> None:
        for target, name in ((self._loop.run_forever, "vterm-loop"), (self._write_loop, "vterm-writer"),
                             (self._flush_loop, "vterm-output"), (self._heartbeat_loop, "vterm-heartbeat"),
                             (self._redis_heartbeat_loop, "vterm-heartbeat-redis")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        install_submitter(lambda coro: asyncio.run_coroutine_threadsafe(coro, self._loop))
        # A host that cannot sandbox refuses to start, saying what it lacks (never silently off).
        self.driver.sandbox.check()
        usage = ResourceUsageThread(backend_id=self.backend_id, shell_pids=self.driver.shell_pids,
                                    sandbox=self.driver.sandbox, write=self._writes.put, stop=self._stop)
        usage.start()
        self._threads.append(usage)
        self._usage = usage
        adopted = self.driver.start()
        services.backend_register(backend_id=self.backend_id, hostname=socket.gethostname(),
                                  capacity=settings.VTERM["BACKEND_CAPACITY"], sandbox=self.driver.sandbox.mode)
        # Jobs of a worker before this one ended with it (their output pipes were its own).
        for info in adopted:
            self.driver.sandbox.jobs_sweep(info.name)
        job_services.jobs_end_on_backend(self.backend_id, f"its backend worker ({self.backend_id}) restarted")
        # Adopted shells are matched with the database before any task runs (sessions/failover.py).
        failover_runtime.reconcile(self.parts, restarted=True, adopted=adopted)
        for t in (InboxThread(self.parts, self._stop), self.env_tracker, HandoffCheck(self.parts, self._stop)):
            t.start()
            self._threads.append(t)
        log.info("backend %s up: tmux %s, %d shell(s) adopted, sandbox: %s", self.backend_id,
                 self.driver.summary, len(adopted), self.driver.sandbox.mode)

    def stop(self) -> None:
        self.stopping = True
        self._stop.set()
        self.jobs.runner.close()
        self._wake.set()
        self.driver.close()
        self.driver.sandbox.close()
        self._writes.put(None)
        for t in self._threads:
            if t.name == "vterm-writer":
                t.join(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def exit_worker(self) -> None:
        """End this worker process as a stop does (its supervisor starts it again). With no
        heartbeat from here on, the pool moves its sessions (at once when the stop drains)."""
        self._stop.set()
        self._wake.set()
        os.kill(os.getpid(), signal.SIGTERM)

    # -- requests from tasks ----------------------------------------------------

    def session_lock(self, session_id: str):
        """Held while a session's shell is (re)built here and while its inbox messages are carried
        out: a command sent once the session is active waits for the ones queued before it."""
        return self._session_locks.hold(session_id)

    def start_in_background(self, job: Callable[[], None]) -> None:
        """Run a shell start on one of the start threads (its job answers its caller itself)."""
        def run() -> None:
            try:
                job()
            finally:
                db_connection.close()  # this thread's own connection
        self._starts.submit(run)

    def session_start(self, session_id: str, epoch: int, cwd: str, env: dict, cols: int, rows: int,
                      resume: bool = False, sandbox: dict | None = None) -> dict:
        with self.session_lock(session_id):
            if resume:  # a session moving here from another backend
                return failover_runtime.session_resume(self.parts, session_id, epoch, cwd, env, cols, rows,
                                                       sandbox_spec=self.sandbox_spec,
                                                       forget_output_seq=self.forget_output_seq)
            return self._session_create(session_id, epoch, cwd, env, cols, rows, sandbox)

    def _session_create(self, session_id: str, epoch: int, cwd: str, env: dict, cols: int, rows: int,
                        sandbox: dict | None) -> dict:
        hop_trace.mark("worker.start_thread")
        info = self.driver.create_shell(session_id, cwd=cwd, env=env, cols=cols, rows=rows, epoch=epoch,
                                        sandbox=self.sandbox_spec(session_id, sandbox))
        hop_trace.mark("worker.shell_ready")
        self.ledger.epochs[session_id] = epoch
        self.forget_output_seq(session_id)
        close_old_connections()
        queued = services.session_started(session_id=session_id, epoch=epoch, cwd=info.cwd)
        hop_trace.mark("worker.started")
        if queued is None:
            self.driver.kill_shell(session_id)
            return {"ok": False, "error": "the session was placed elsewhere meanwhile"}
        for cmd in queued:  # submitted while the shell was starting
            failover_runtime.queue_command(self.driver, self.ledger, session_id, cmd, from_database=True)
        return {"ok": True, "cwd": info.cwd}

    # -- driver listener (driver threads) ---------------------------------------

    def shell_output(self, name: str, data: bytes) -> None:
        hop_trace.mark("worker.output")
        if not data:
            return  # the output thread keeps no empty entries
        with self._out_lock:
            pending = self._out[name]
            before = len(pending)
            pending += data
        if self._pacer.wakes(before, before + len(data)):  # else the output thread's plan stands
            self._wake.set()

    def command_started(self, name: str, command_id: str, started_at: float) -> None:
        # Written only if the command is still running a moment later (_write_started): most end
        # sooner, and then their one write at the end says everything.
        self._starting[command_id] = (name, started_at, time.monotonic() + STARTED_WRITE_DELAY)
        self._wake.set()  # the output thread sleeps until then, not in ticks

    def _write_started(self, now: float) -> None:
        for command_id, (name, started_at, due) in list(self._starting.items()):
            if due > now or self._starting.pop(command_id, None) is None:
                continue

            def write(command_id=command_id, name=name, started_at=started_at) -> None:
                if command_id in self._finished:
                    return  # already over: its final write says everything
                data = services.command_started(command_id=command_id, started_at=_dt(started_at))
                if data is not None:
                    session_broadcast(name, {"type": "command.event", "command": data})
            self._writes.put(write)

    def remember_command(self, msg: dict) -> None:
        """What the web said of a command it sent (seq, text, submission time): its end is then
        written without reading the row back."""
        self._known[msg["id"]] = msg
        while len(self._known) > KNOWN_MAX:  # ones that never end here (moved, dropped)
            self._known.popitem(last=False)

    def command_finished(self, name: str, result: CommandResult) -> None:
        hop_trace.mark("worker.ended")
        self._finished.add(result.command_id)
        self._starting.pop(result.command_id, None)
        known = self._known.pop(result.command_id, None)
        if known is not None:
            self.env_tracker.command_ended(name, known["command"])

        self._writes.put(_CommandEnd(dict(
            command_id=result.command_id, status=result.status, exit_code=result.exit_code,
            output=clean_output(result.raw, result.stopped_at), output_raw=result.raw, truncated=result.truncated,
            cwd=result.cwd, started_at=_dt(result.started_at), finished_at=_dt(result.finished_at),
            duration_ms=result.duration_ms, reason=result.reason, known=known,
        )))

    def shell_exited(self, name: str, reason: str) -> None:
        self.jobs.runner.session_ended(name, reason)  # before its sandbox goes: they end as interrupted
        epoch = self.ledger.epochs.get(name)
        self.ledger.exited(name)
        # Per-session output state would otherwise grow with every session this backend ever had;
        # a late flush reads the stream's end again.
        self.forget_output_seq(name)
        self._decoders.pop(name, None)
        self._pacer.forget(name)
        # Fenced: a stale copy of a session that moved away does not end it.
        self._writes.put(lambda: services.session_shell_exited(session_id=name, reason=reason,
                                                               backend_id=self.backend_id, epoch=epoch))

    def command_lost(self, session_id: str, command_id: str, reason: str) -> None:
        """A command for a shell this backend does not have: it ends, it is not dropped."""
        self.command_finished(session_id, CommandResult(
            command_id=command_id, status="interrupted", exit_code=None, raw=b"", truncated=False,
            cwd=None, started_at=None, finished_at=time.time(), duration_ms=None, reason=reason))

    def server_lost(self) -> None:
        log.error("backend %s lost its tmux server", self.backend_id)
        threading.Thread(target=self._recover_tmux, name="vterm-recover", daemon=True).start()

    def _recover_tmux(self) -> None:
        """A tmux server died under a live worker: start it again, move the sessions it held. The
        backend's other servers and their sessions are not touched.

        Runs on a thread of its own (the driver's reader thread reports the loss).
        """
        with self.recover_lock:
            if self.driver.alive or self.stopping:
                return
            log.error("backend %s: a tmux server was lost; starting it again", self.backend_id)
            lost: list[str] = []
            for attempt in range(20):
                try:
                    lost += self.driver.restart_lost()
                    break
                except Exception:
                    log.exception("tmux restart failed (attempt %d)", attempt + 1)
                    time.sleep(0.5)
            else:
                # Heartbeating on without tmux, the backend would keep its sessions and run nothing.
                log.critical("backend %s: no tmux server could be started; the worker exits", self.backend_id)
                self.exit_worker()
                return
            for name in lost:
                self.ledger.epochs.pop(name, None)
            close_old_connections()
            failover_runtime.reconcile(self.parts, restarted=False,
                                       gone_reason=f"the tmux server of backend {self.backend_id} died")

    def write(self, job: Callable[[], None]) -> None:
        """Queue a database write behind the ones before it (the writer thread)."""
        self._writes.put(job)

    def flush_writes(self, timeout: float = 30.0) -> None:
        """Wait until every database write queued so far is done."""
        done = threading.Event()
        self._writes.put(done.set)
        done.wait(timeout)

    def forget_output_seq(self, name: str) -> None:
        """The output stream may have grown elsewhere (the session moved): read its end again."""
        self._seq.pop(name, None)

    # -- threads ----------------------------------------------------------------

    def _write_loop(self) -> None:
        held: list = []  # a job taken while gathering ends, run next
        while True:
            job = held.pop() if held else self._writes.get()
            if job is None:
                return
            if isinstance(job, _CommandEnd):
                # The ends queued right behind this one are written with it: one commit for all.
                ends = [job]
                while len(ends) < END_BATCH_MAX:
                    try:
                        more = self._writes.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(more, _CommandEnd):
                        held.append(more)
                        break
                    ends.append(more)
                job = functools.partial(self._write_ends, ends)
            try:
                job()
            except Exception:
                log.exception("backend write failed")
                close_old_connections()

    def _write_ends(self, ends: list[_CommandEnd]) -> None:
        for end in ends:
            self._finished.discard(end.fields["command_id"])
        try:
            services.commands_finished([end.fields for end in ends])
        except Exception:
            if len(ends) == 1:
                raise
            # One bad end must not take the others with it: each on its own.
            log.exception("backend: %d command ends failed together; writing them one by one", len(ends))
            close_old_connections()
            for end in ends:
                try:
                    services.commands_finished([end.fields])
                except Exception:
                    log.exception("backend: the end of command %s failed", end.fields["command_id"])
                    close_old_connections()

    def _flush_loop(self) -> None:
        """Send output as it comes, paced (workers/output_frames.FloodPacer): at once while this thread
        is idle (a keystroke's echo, a prompt), else what came meanwhile, of every session, once per
        interval in one send, and in whole frames while a session floods. Each send is a few Redis round
        trips, a group send and a wake-up of each viewer's consumer whatever its size: a flood sent as
        tmux hands it over (a few KB at a time) would pay them per few KB, and so would sessions sent
        one by one under load."""
        r = sync_client()
        viewers = ViewerSender(r)
        pacer = self._pacer
        while not self._stop.is_set():
            self._wake.clear()  # output that comes after this wakes the loop again (shell_output)
            now = time.monotonic()
            if self._starting:
                self._write_started(now)
            wake_at = [d for _, _, d in list(self._starting.values())]
            batch: dict[str, bytes | bytearray] = {}
            with self._out_lock:
                send, later = pacer.plan({name: len(pending) for name, pending in self._out.items()}, now)
                for name, n in send.items():
                    pending = self._out[name]
                    if n == len(pending):
                        batch[name] = self._out.pop(name)
                    else:
                        batch[name] = pending[:n]
                        del pending[:n]  # from the front of a bytearray: no copy of the rest
            if later is not None:
                wake_at.append(later)
            if batch:
                for name, data in batch.items():
                    pacer.sent(name, len(data), now)
                self._send_output(r, viewers, batch)
                continue  # more may have come while sending
            self._wake.wait(max(0.0, min(wake_at) - now) if wake_at else OUTPUT_POLL)

    def _send_output(self, r, viewers: ViewerSender, batch: dict[str, bytes | bytearray]) -> None:
        """One batch of output: to the sessions' streams, then to the viewers of those watched."""
        maxlen = settings.VTERM["STREAM_MAXLEN"]
        frame_max = settings.VTERM["OUTPUT_FRAME_MAX"]
        try:
            pipe = r.pipeline(transaction=False)
            frames = []
            now = f"{time.time():.6f}"
            for name, data in batch.items():
                # A character split between two batches is decoded whole in the later one.
                text = self._decoders[name].decode(data)
                for piece in frame_pieces(text, frame_max):
                    seq = self._next_seq(r, name)
                    # The stream id is the frame's seq: replay is XRANGE from since+1.
                    # "t": when it was written, for the session recording (sessions/recording.py).
                    pipe.xadd(output_stream_key(name), {"d": piece.encode(), "t": now}, id=f"{seq}-1",
                              maxlen=maxlen, approximate=True)
                    trim_below = self._stream_budgets[name].add(seq, len(piece))
                    if trim_below:
                        pipe.xtrim(output_stream_key(name), minid=f"{trim_below}-0", approximate=True)
                    frames.append((name, seq, piece))
            record_output_bytes(self.backend_id, sum(len(d) for d in batch.values()), pipe=pipe)
            # Asked after the stream is written: see sessions/broadcast.py.
            asked = len(pipe)
            for name in batch:
                viewers.ask(pipe, name)
            sends = [(name, {"type": "output.frame", "seq": seq, "data": text}) for name, seq, text in frames]
            calls = viewers.send_known(pipe, sends)
            replies = pipe.execute(raise_on_error=False)
            hop_trace.mark("worker.output_stored")
            told = asked + len(batch)
            if failed := next((x for x in replies[:told] if isinstance(x, Exception)), None):
                raise failed
            viewers.send_rest(sends, dict(zip(batch, replies[asked:told])), calls, replies[told:])
            hop_trace.mark("worker.output_sent")
        except Exception:
            log.exception("output flush failed")

    def _next_seq(self, r, name: str) -> int:
        seq = self._seq.get(name)
        if seq is None:
            last = r.xrevrange(output_stream_key(name), count=1)
            seq = int(last[0][0].split(b"-")[0]) if last else 0
        seq += 1
        self._seq[name] = seq
        return seq

    def _heartbeat_loop(self) -> None:
        """The database heartbeat, on a thread of its own: with Redis paused, each Redis call waits out
        its socket timeout (5 s), and sharing a loop with them the heartbeat fell behind the TTL."""
        interval = settings.VTERM["HEARTBEAT_INTERVAL"]
        while not self._stop.wait(interval):
            try:
                if services.backend_heartbeat(backend_id=self.backend_id) == "dead":
                    failover_runtime.on_declared_dead(self.parts)
            except Exception:
                log.exception("heartbeat failed")
                close_old_connections()

    def _redis_heartbeat_loop(self) -> None:
        """The heartbeat's Redis key, and this backend's stats for the pool."""
        interval = settings.VTERM["HEARTBEAT_INTERVAL"]
        sampler, last_stats = StatsSampler(), 0.0
        while not self._stop.wait(interval):
            try:
                services.backend_heartbeat_redis(backend_id=self.backend_id)
            except Exception:
                log.warning("heartbeat in Redis failed", exc_info=True)
            if time.monotonic() - last_stats >= settings.VTERM["STATS_INTERVAL"]:
                last_stats = time.monotonic()
                self._publish_stats(sampler)

    def _session_totals(self) -> dict | None:
        """The sandboxed sessions' summed figures from the resource sampler's last round, if recent."""
        totals = self._usage.session_totals if self._usage is not None else None
        if totals is None:
            return None
        at, figures = totals
        fresh = 2 * settings.VTERM["RESOURCE_SAMPLE_INTERVAL"] + settings.VTERM["STATS_INTERVAL"]
        return figures if time.monotonic() - at <= fresh else None

    def _publish_stats(self, sampler: StatsSampler) -> None:
        """Memory and CPU of this backend for the pool (sessions/pool.py), kept as long as a heartbeat."""
        try:
            stats = sampler.sample(self.driver.server_pids(), self._session_totals())
            key = backend_stats_key(self.backend_id)
            pipe = sync_client().pipeline(transaction=False)
            pipe.hset(key, mapping=stats)
            pipe.expire(key, max(1, int(settings.VTERM["HEARTBEAT_TTL"] * 3)))
            pipe.execute()
        except Exception:
            log.warning("backend stats failed", exc_info=True)


_runtime: BackendRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> BackendRuntime:
    """This process's backend runtime (started by the worker's boot signal)."""
    if _runtime is None:
        raise RuntimeError("this process is not a backend worker")
    return _runtime


def runtime_start() -> BackendRuntime:
    """Start this process's backend runtime. One that fails to start is stopped again, not kept:
    half started (a heartbeat, no inbox reader) it would look healthy and never run a command."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            rt = BackendRuntime()
            try:
                rt.start()
            except BaseException:
                try:
                    rt.stop()
                except Exception:  # the start's own error is the one to raise
                    log.exception("stopping the runtime that failed to start failed too")
                raise
            _runtime = rt
        return _runtime


def runtime_stop() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.stop()
            _runtime = None

