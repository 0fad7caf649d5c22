"""Drive bash shells in one tmux server over one control-mode connection.

Every shell is a window of the tmux session ``vterm``; the single control client
attached to it sees every pane's raw output as it happens (DESIGN.md §3). Commands
are typed as a bracketed paste, and their start, end, exit code and cwd come from
the marks the shell prints (see ``shell.py``). One command runs per shell at a
time; further ones wait in that shell's queue, so shells never wait on each other.

This module knows nothing of Django, Celery or Redis: it reports through a
``Listener``. It does not use libtmux: libtmux runs a tmux client process per call and reads
no control-mode output, while every hot path here (a command, a keystroke, a pane's output)
is one line on the one connection (issue 16 dropped the unused dependency).
"""

from __future__ import annotations

import fcntl
import glob
import logging
import os
import secrets
import shlex
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from ..sandbox import Box, NoSandbox, Sandbox, SandboxSpec, SandboxUnavailable
from .control import ControlClient, ControlClosed, TmuxCommandError
from .protocol import quote, quote_format, valid_key
from .shell import BASHRC, CLEAR_LINE, HISTORY_ENV, NONCE_ENV, READING, Mark, MarkParser
from .shellenv import EnvParseError, parse_declare_px, user_env

log = logging.getLogger(__name__)

TMUX_SESSION = "vterm"
WINDOW_PREFIX = "vt-"
# What a restarted worker must find of each shell (its nonce, epoch, last command) is kept in the hidden
# environment of a session of its own, as __vterm_<key>_<window number>: unlike a window option, whose
# every set-option makes tmux recompute the size of every window (docs/bench.md, "tmux cost as windows
# grow"), setting one costs the same with 1 or 1000 windows; and no shell is started in that session,
# so no new window copies that environment.
KEEP_SESSION = "_vterm_kept"
WINDOW_ENV_KEYS = ("nonce", "epoch", "cmd")
# The control client's own size, the API's default for a session: a window of that size follows it and
# needs no size of its own, which tmux 3.3a pays with a resize of every window (refresh-client -C).
CLIENT_SIZE = (120, 40)
TMUX_CONF = """\
set -g default-terminal xterm-256color
set -g history-limit 5000
set -g escape-time 0
set -g status off
set -g remain-on-exit off
set -g exit-empty off
"""
# After a timeout or interrupt, how long to wait before pressing harder.
ESCALATE_AFTER = 2.0
# How many times the shell's children are killed before a stopped command is ended anyway: a shell
# that ignores Ctrl-C and has nothing to kill (a loop of builtins under `trap '' INT`) never ends it.
ESCALATE_ROUNDS = 2
# How long readline may read again, with no start mark, before the line typed is taken as not run
# (a history expansion that failed) or, after a Ctrl-C, as not yet abandoned: a continuation prompt,
# readline's end or an end mark would follow at once.
REREAD_GRACE = 0.5
# Longest wait for tmux to pass a resize on to the terminal.
RESIZE_GRACE = 1.0
# How long after an end mark to wait for readline to announce it is reading.
PROMPT_GRACE = 0.25
# Longest wait for an idle shell to write out its environment (capture_env).
ENV_CAPTURE_TIMEOUT = 5.0
# How often the ticker looks at timeouts, prompts and pending resizes.
TICK = 0.05


# The reason of a line bash read and did not run.
NOT_RUN = "not run: the shell read the line and ran nothing (a failed history expansion: a '!' in it?)"


class ShellError(RuntimeError):
    """A request about a shell that cannot be carried out (gone, bad cwd...)."""


class ShellDidNotStart(ShellError):
    """A new shell exited as it started, or never showed its prompt: likely because of what it was
    started with (its environment, its directory)."""


@dataclass
class CommandResult:
    command_id: str
    status: str  # succeeded | failed | timed_out | interrupted
    exit_code: int | None
    raw: bytes
    truncated: bool
    cwd: str | None
    started_at: float | None  # wall clock, seconds
    finished_at: float
    duration_ms: float | None
    reason: str = ""
    stopped_at: int | None = None  # len(raw) when vterm stopped it (Ctrl-C): its traces follow


@dataclass
class ShellInfo:
    name: str
    window_id: str
    pane_id: str
    cwd: str
    cols: int
    rows: int
    busy: bool
    epoch: int = 0  # the placement this shell was made for (a fencing token, opaque here)
    last_command: str = ""  # id of the command last typed into it (survives the worker)


@dataclass
class Screen:
    cols: int
    rows: int
    lines: list[str]
    cursor_x: int
    cursor_y: int


class Listener(Protocol):
    def shell_output(self, name: str, data: bytes) -> None: ...
    def command_started(self, name: str, command_id: str, started_at: float) -> None: ...
    def command_finished(self, name: str, result: CommandResult) -> None: ...
    def shell_exited(self, name: str, reason: str) -> None: ...
    def server_lost(self) -> None: ...


@dataclass
class EnvAsk:
    """The shells ask_env typed the hidden command into, for read_env."""
    names: list[str]
    timeout: float
    asked: list = field(default_factory=list)  # (name, _Shell, _Command, path of its file)


@dataclass
class _Command:
    id: str
    text: str
    timeout: float | None
    idle_timeout: float | None = None  # seconds without output before it is stopped
    state: str = "queued"  # queued -> typed -> running
    # Typed, and readline took the line: what bash prints before it starts (a syntax error) is its output.
    accepted: bool = False
    raw: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    started_mono: float | None = None
    started_wall: float | None = None
    deadline: float | None = None
    last_output: float | None = None  # monotonic, while running
    stop_reason: str | None = None  # "timed_out" | "interrupted"
    stop_note: str = ""  # why it was stopped, for its result's reason
    escalate_at: float | None = None
    escalations: int = 0  # rounds of killing the shell's children since the stop
    reread_at: float | None = None  # while typed: readline reads again, and nothing ran yet
    stopped_at: int | None = None  # len(raw) at the first stop
    incomplete: bool = False
    # The driver's own (capture_env): no listener hears of it, its output is not forwarded.
    hidden: bool = False
    done: threading.Event | None = None


@dataclass
class _Shell:
    name: str
    window_id: str
    pane_id: str
    parser: MarkParser
    cols: int
    rows: int
    cwd: str
    ready: threading.Event = field(default_factory=threading.Event)
    queue: deque = field(default_factory=deque)
    current: _Command | None = None
    exit_code: int | None = None
    at_prompt: float | None = None  # when the end mark came, until readline is reading
    tty: str = ""
    pid: int = 0  # the pane's process (bash, or the sandbox around it)
    resize_until: float | None = None  # a resize is on its way to the terminal until then
    epoch: int = 0
    last_command: str = ""
    muted: bool = False  # a hidden command was typed: its echo and prompt are not forwarded
    late_read: bool = False  # typed without readline's R (PROMPT_GRACE): that R may still come
    box: Box | None = None
    oom_kills: int = 0  # the sandbox's out-of-memory kills already told of


class TmuxDriver:
    def __init__(
        self,
        socket_path: str,
        listener: Listener,
        *,
        shell_env: dict[str, str],
        output_limit: int = 1 << 20,
        source_user_bashrc: bool = True,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.listener = listener
        self.shell_env = dict(shell_env)
        self.output_limit = output_limit
        self.source_user_bashrc = source_user_bashrc
        self._dir = os.path.dirname(socket_path)
        self._rc_path = os.path.join(self._dir, "vterm.bashrc")
        self._conf_path = os.path.join(self._dir, "tmux.conf")
        # Where shells run: their own sandbox each, or (None) as the service itself.
        self.sandbox = sandbox or NoSandbox(self._dir, self._rc_path)
        self.bash = shutil.which("bash", path=self.shell_env.get("PATH")) or "/bin/bash"
        self._lock = threading.RLock()
        self._shells: dict[str, _Shell] = {}
        self._by_pane: dict[str, _Shell] = {}
        self._by_window: dict[str, _Shell] = {}
        self._unclaimed: dict[str, list[bytes]] = {}
        self._control: ControlClient | None = None
        self._stop = threading.Event()
        self._attached = threading.Event()
        self._ticker: threading.Thread | None = None
        self.server_pid: int | None = None  # the tmux server's, once attached

    # -- lifecycle ------------------------------------------------------------

    def start(self, *, alone: bool = True) -> list[ShellInfo]:
        """Start (or find) the tmux server, attach, and adopt the shells it holds.

        ``alone``: the only driver of its directory. Drivers of several servers sharing one
        (workers/tmux/pool.py) leave to their pool what concerns them all: preparing the directory,
        ending what shells gone meanwhile left in their sandboxes, and the ticker.
        """
        if alone:
            prepare_dir(self._dir)
        if not self._tmux_ok("has-session", "-t", TMUX_SESSION):
            subprocess.run(
                self._tmux_argv("-f", self._conf_path, "new-session", "-d", "-s", TMUX_SESSION,
                                "-n", "_vterm", "-x", "80", "-y", "24", "tail -f /dev/null"),
                env=self._server_env(), check=True, capture_output=True, timeout=10,
            )
        if not self._tmux_ok("has-session", "-t", f"={KEEP_SESSION}"):
            subprocess.run(self._tmux_argv("new-session", "-d", "-s", KEEP_SESSION, "-n", "_vterm", "tail -f /dev/null"),
                           env=self._server_env(), check=True, capture_output=True, timeout=10)
        self._control = ControlClient(
            self._tmux_argv("-C", "attach-session", "-t", TMUX_SESSION),
            env=self._server_env(), on_output=self._on_output, on_event=self._on_event,
        )
        # tmux may run the first lines written before the attach-session it was started with:
        # refresh-client then fails with "no current client".
        if not self._attached.wait(10):
            raise ControlClosed("tmux did not attach the control client")
        # For its CPU and memory (a server lost is a new driver: it does not change under this one).
        pid = self._call("display-message -p '#{pid}'")
        self.server_pid = int(pid[0]) if pid and pid[0].isdigit() else None
        adopted = self._adopt()
        if alone:
            release_others(self.sandbox, set(self._shells))
            self._ticker = threading.Thread(target=self._tick_loop, name="tmux-ticker", daemon=True)
            self._ticker.start()
        return adopted

    def close(self) -> None:
        """Detach; the tmux server and its shells live on for the next worker."""
        self._stop.set()
        if self._control:
            self._control.close()

    def kill_server(self) -> None:
        self._tmux_ok("kill-server")

    @property
    def alive(self) -> bool:
        return self._control is not None and not self._control.closed.is_set()

    def shell_names(self) -> list[str]:
        with self._lock:
            return list(self._shells)

    def shell_pids(self) -> dict[str, int]:
        """pid of each shell's process, for resource accounting (known since it started: a pane's
        process does not change, and asking tmux costs it a format per window)."""
        with self._lock:
            return {name: shell.pid for name, shell in self._shells.items() if shell.pid}

    # -- shells ---------------------------------------------------------------

    def create_shell(self, name: str, *, cwd: str, env: dict[str, str], cols: int, rows: int,
                     timeout: float = 10.0, epoch: int = 0, history: list[str] | None = None,
                     sandbox: SandboxSpec | None = None) -> ShellInfo:
        """Start a shell (in its own sandbox, when the driver has one: ``sandbox`` says as whom and
        within what limits). ``cwd`` empty: the user's home. ``history``: commands (oldest first)
        the shell's history starts with, for a session that moved here (Up-arrow finds them);
        nothing is printed for them."""
        with self._lock:
            if name in self._shells:
                raise ShellError(f"shell {name} exists")
        try:
            box = self.sandbox.prepare(name, sandbox)
        except (OSError, SandboxUnavailable) as exc:
            self.sandbox.release(name)
            raise ShellError(f"the sandbox could not be made: {exc}") from exc
        try:
            cwd = cwd or box.home
            if not box.has_dir(cwd):
                where = "in the session's sandbox" if box.sandboxed else "on the backend"
                raise ShellError(f"cwd: no such directory {where}: {cwd}")
            nonce = secrets.token_hex(16)
            full_env = {**self.shell_env, **box.env(), **env, NONCE_ENV: nonce}
            if self.source_user_bashrc:
                full_env["VTERM_SOURCE_BASHRC"] = "1"
            hist_path = None
            if history:
                # Read by the rc at the first prompt, so gone once the shell is ready.
                hist_path, inner = box.exchange_file()
                try:
                    fd = os.open(hist_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        if box.sandboxed:
                            os.fchown(f.fileno(), box.spec.uid, box.spec.gid)
                        f.write(b"".join(c.encode("utf-8", "replace") + b"\0" for c in history if "\0" not in c))
                    full_env[HISTORY_ENV] = inner
                except OSError as exc:  # a nicety: the shell starts without it
                    log.warning("shell %s: could not write its history: %s", name, exc)
            try:
                return self._create_shell(name, box=box, cwd=cwd, full_env=full_env, nonce=nonce, cols=cols,
                                          rows=rows, timeout=timeout, epoch=epoch)
            finally:
                if hist_path:
                    _unlink(hist_path)
        except BaseException:
            with self._lock:
                started = name in self._shells
            if not started:
                self.sandbox.release(name)
            raise

    def _create_shell(self, name: str, *, box: Box, cwd: str, full_env: dict[str, str], nonce: str, cols: int,
                      rows: int, timeout: float, epoch: int) -> ShellInfo:
        bash = "/bin/bash" if box.sandboxed else self.bash
        argv = box.argv([bash, "--noprofile", "--rcfile", box.rc_path, "-i"], cwd)
        args = [f"new-window -d -P -F '#{{window_id}} #{{pane_id}} #{{pane_tty}} #{{pane_pid}}' -t {TMUX_SESSION}:",
                "-n", quote_format(WINDOW_PREFIX + name), "-c", quote_format("/" if box.sandboxed else cwd)]
        for k, v in full_env.items():
            args += ["-e", quote(f"{k}={v}")]
        args += [quote(a) for a in argv]
        window_id, pane_id, tty, pid = self._call(" ".join(args))[0].split()
        if box.sandboxed:
            _own_terminal(tty, box.spec.uid, box.spec.gid)
        shell = _Shell(name=name, window_id=window_id, pane_id=pane_id, tty=tty, pid=int(pid),
                       parser=MarkParser(nonce), cols=cols, rows=rows, cwd=cwd, epoch=int(epoch), box=box)
        with self._lock:
            self._register(shell)
        try:
            self._call(self._keep_cmd(window_id, "epoch", str(int(epoch))))
            self._call(self._keep_cmd(window_id, "nonce", nonce))
            with self._lock:
                gone = self._shells.get(name) is not shell
            if gone:  # _shell_gone forgot them before they were kept
                self._forget(window_id)
            self._apply_size(shell, new=True)
            self._call(f"display-message -p -t {window_id} ok")  # fails if the window is gone
        except TmuxCommandError as exc:  # its window is gone: the shell exited as it started
            self.kill_shell(name, "the shell exited as it started")
            raise ShellDidNotStart("the shell exited as it started") from exc
        if not shell.ready.wait(timeout):
            self.kill_shell(name)
            raise ShellDidNotStart("the shell did not start in time")
        with self._lock:
            if self._shells.get(name) is not shell:  # woken by _shell_gone
                raise ShellDidNotStart("the shell exited as it started")
        return self._info(shell)

    def kill_shell(self, name: str, reason: str = "session ended") -> None:
        with self._lock:
            shell = self._shells.get(name)
        if shell is None:
            return
        try:
            self._call(f"kill-window -t {shell.window_id}")
        except TmuxCommandError:
            pass  # already gone
        self._shell_gone(shell, reason)
        # And everything it started, however detached.
        self.sandbox.release(name, shell.box.token if shell.box else None)

    def shell_info(self, name: str) -> ShellInfo:
        shell = self._get(name)
        info = self._info(shell)
        info.busy = shell.current is not None
        return info

    def drop_queued(self, name: str) -> list[str]:
        """Take the shell's waiting commands off its queue, unfinished (they will run elsewhere)."""
        shell = self._get(name)
        with self._lock:
            dropped = list(shell.queue)
            shell.queue.clear()
        for cmd in dropped:
            if cmd.hidden:
                self._finish(shell, cmd, "interrupted", None, cwd=None)
        return [c.id for c in dropped if not c.hidden]

    def adopt_command(self, name: str, command_id: str, started_at: float | None, *, timeout: float | None = None,
                      idle_timeout: float | None = None) -> None:
        """Take a command that is still running in an adopted shell as the current one.

        Its end mark then finishes it; output from before the adoption is not captured. Its
        ``timeout`` counts from when it started; its ``idle_timeout`` from now (what it printed
        while no worker was watching is not known).
        """
        shell = self._get(name)
        with self._lock:
            if shell.current is not None:
                raise ShellError(f"shell {name} already has a current command")
            now, wall = time.monotonic(), time.time()
            started_wall = started_at or wall
            cmd = _Command(id=command_id, text="", timeout=timeout, idle_timeout=idle_timeout, state="running",
                           started_mono=now - max(0.0, wall - started_wall), started_wall=started_wall,
                           last_output=now)
            if timeout:
                cmd.deadline = cmd.started_mono + timeout
            shell.current = cmd
            shell.ready.clear()

    def resize(self, name: str, cols: int, rows: int) -> None:
        shell = self._get(name)
        with self._lock:
            shell.cols, shell.rows = cols, rows
            # tmux applies a pane's new size to its terminal on a timer; commands that
            # follow wait for it (not the caller, and not other shells).
            shell.resize_until = time.monotonic() + RESIZE_GRACE
        self._apply_size(shell)
        # tmux passes the new size to the terminal on a timer; set it now, so that what is
        # typed next (a person's `stty size`, a full-screen program) already sees it.
        _set_tty_size(shell.tty, rows, cols)

    def send_text(self, name: str, text: str) -> None:
        shell = self._get(name)
        if text:
            # "--": text beginning with '-' is text, not an option (quotes do not stop tmux's getopt).
            self._shell_call(shell, f"send-keys -t {shell.pane_id} -l -- {quote(text)}")

    def send_keys(self, name: str, keys: list[str]) -> None:
        shell = self._get(name)
        bad = [k for k in keys if not valid_key(k)]
        if bad:
            raise ShellError(f"keys: not key names: {bad}")
        if keys:
            self._shell_call(shell, f"send-keys -t {shell.pane_id} -- " + " ".join(quote(k) for k in keys))

    def screen(self, name: str, *, escapes: bool = False, history: int = 0) -> Screen:
        shell = self._get(name)
        flags = "-p -e" if escapes else "-p"
        if history:
            flags += f" -S -{int(history)}"
        lines = self._shell_call(shell, f"capture-pane {flags} -t {shell.pane_id}")
        info = self._shell_call(shell, f"display-message -p -t {shell.pane_id} "
                          "'#{cursor_x} #{cursor_y} #{pane_width} #{pane_height}'")
        x, y, w, h = (int(v) for v in info[0].split())
        lines = lines[: h + history] + [""] * max(0, h + history - len(lines))
        return Screen(cols=w, rows=h, lines=lines, cursor_x=x, cursor_y=y)

    def current_cwd(self, name: str) -> str:
        shell = self._get(name)
        out = self._call(f"display-message -p -t {shell.pane_id} '#{{pane_current_path}}'")
        return out[0] if out and out[0] else shell.cwd

    def job_context(self, name: str) -> tuple[Box, int | None, str]:
        """What a job beside the shell needs of it: its sandbox, its bash's pid (to enter its
        namespaces) and its cwd as the shell sees it (from its last prompt)."""
        shell = self._get(name)
        pid = None
        out = self._call(f"display-message -p -t {shell.pane_id} '#{{pane_pid}}'")
        if out and out[0].isdigit():
            pid = _bash_below(int(out[0]))  # in a sandbox, bash runs under bwrap
        return shell.box or self.sandbox.find(name), pid, shell.cwd

    def capture_env(self, names: list[str], timeout: float = ENV_CAPTURE_TIMEOUT) -> dict[str, dict[str, str] | None]:
        """The exported environment of idle shells, as their user left it (a session moving away).

        Each shell is typed a hidden command (the rc's ``__vterm_env``, writing ``declare -px``
        to a private file): it goes through the same queue as commands but no listener hears
        of it and its echo and prompt are not forwarded; ``$?`` is kept and it leaves no
        history entry. What is left out of the result: shellenv.user_env. None for a shell
        that is gone, busy (running or holding commands) or does not answer within ``timeout``
        (all shells are asked at once).
        """
        asked = self.ask_env(names, timeout)
        return self.read_env(asked, time.monotonic() + timeout)

    def ask_env(self, names: list[str], timeout: float = ENV_CAPTURE_TIMEOUT) -> EnvAsk:
        """capture_env's first half: type the hidden command into each idle shell of ``names``."""
        asked = EnvAsk(names=list(names), timeout=timeout)
        for name in names:
            with self._lock:
                shell = self._shells.get(name)
                if shell is None or shell.current is not None or shell.queue:
                    continue
                path, inner = (shell.box or self.sandbox.find(name)).exchange_file()
                # Leading space: HISTCONTROL=ignorespace keeps it out of the history at once.
                cmd = _Command(id=f"env-{secrets.token_hex(8)}", text=f' __vterm_env "$?" {shlex.quote(inner)}',
                               timeout=timeout, hidden=True, done=threading.Event())
                shell.queue.append(cmd)
                self._start_next(shell)
            asked.asked.append((name, shell, cmd, path))
        return asked

    def read_env(self, asked: EnvAsk, deadline: float) -> dict[str, dict[str, str] | None]:
        """capture_env's second half: what the shells asked wrote, waited for until ``deadline``."""
        out: dict[str, dict[str, str] | None] = dict.fromkeys(asked.names)
        for name, shell, cmd, path in asked.asked:
            cmd.done.wait(max(0.0, deadline - time.monotonic()))
            with self._lock:
                if cmd in shell.queue:
                    shell.queue.remove(cmd)  # never typed: the shell stayed busy
            try:
                if cmd.done.is_set():
                    # Written by the shell's user: a link planted there is not followed.
                    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                        env, dropped = user_env(parse_declare_px(f.read()), self.shell_env)
                    if dropped:
                        log.info("shell %s: not carried (too large or not UTF-8): %s", name, ", ".join(dropped))
                    out[name] = env
                else:
                    log.warning("shell %s did not write its environment in %g s", name, asked.timeout)
            except (OSError, EnvParseError) as exc:
                log.warning("shell %s: could not read its environment: %s", name, exc)
            finally:
                _unlink(path)
        return out

    # -- commands -------------------------------------------------------------

    def run(self, name: str, command_id: str, text: str, timeout: float | None = None,
            idle_timeout: float | None = None) -> None:
        """Queue a command; the listener hears when it starts and when it ends. ``timeout``: seconds
        it may run; ``idle_timeout``: seconds it may print nothing. Either then stops it (_stop_command)."""
        shell = self._get(name)
        with self._lock:
            shell.queue.append(_Command(id=command_id, text=text, timeout=timeout, idle_timeout=idle_timeout))
            self._start_next(shell)

    def interrupt(self, name: str, command_id: str | None = None) -> bool:
        """Ctrl-C the running command (or drop a queued one). False if nothing matched."""
        shell = self._get(name)
        with self._lock:
            cur = shell.current
            if cur is not None and (command_id is None or cur.id == command_id):
                self._stop_command(shell, cur, "interrupted", "interrupted")
                return True
            for queued in list(shell.queue):
                if queued.id == command_id:
                    shell.queue.remove(queued)
                    self._finish(shell, queued, "interrupted", None, cwd=None,
                                 reason="interrupted before it started")
                    return True
        if command_id is None:
            self._ctrl_c(shell)
            return True
        return False

    def _stop_command(self, shell: _Shell, cmd: _Command, status: str, note: str) -> None:
        """Ctrl-C the running command, which then ends ``status`` (the first stop's) with ``note`` as
        its reason; if Ctrl-C is ignored the ticker kills the shell's children. Under the lock."""
        cmd.stop_reason = cmd.stop_reason or status
        cmd.stop_note = cmd.stop_note or note
        if cmd.stopped_at is None:
            cmd.stopped_at = len(cmd.raw)
        cmd.escalate_at = time.monotonic() + ESCALATE_AFTER
        self._ctrl_c(shell)

    def _start_next(self, shell: _Shell) -> None:
        # Called under the lock.
        if shell.current is not None or not shell.queue or not shell.ready.is_set():
            return
        if shell.resize_until is not None:
            if time.monotonic() < shell.resize_until and _tty_size(shell.tty) not in (None, (shell.rows, shell.cols)):
                return  # the ticker tries again
            shell.resize_until = None
        cmd = shell.queue.popleft()
        shell.current = cmd
        cmd.state = "typed"
        if cmd.hidden:
            shell.muted = True
        else:
            shell.last_command = cmd.id
            # Kept by tmux, so a worker that restarts knows what this shell was last given.
            self._send_nowait(self._keep_cmd(shell.window_id, "cmd", cmd.id))
        if cmd.timeout:
            cmd.deadline = time.monotonic() + cmd.timeout
        text = cmd.text
        if "\n" in text:
            # One unit for bash: one start mark, one end mark, one exit code.
            text = "{ " + text + "\n}"
        # What a person left on the line (half typed, an incremental search) would join the command:
        # the rc's CLEAR_LINE key kills it first (C-y brings it back); on an empty line it prints nothing.
        # Then a bracketed paste: readline takes tabs and control keys literally.
        self._send_nowait(f"send-keys -t {shell.pane_id} -l -- " + quote(CLEAR_LINE + "\x1b[200~" + text + "\x1b[201~\r"))

    # -- events from tmux (reader thread) ---------------------------------------

    def _on_output(self, pane_id: str, data: bytes) -> None:
        with self._lock:
            shell = self._by_pane.get(pane_id)
            if shell is None:
                # A new window can speak before create_shell has registered it.
                held = self._unclaimed.setdefault(pane_id, [])
                if len(held) < 64:
                    held.append(data)
                return
            # While a hidden command runs (from its echo to the prompt after it), only what
            # comes outside it is forwarded (its marks would be taken for a command's by viewers).
            kept = bytearray() if shell.muted else None
            prompt_after = False
            for piece in shell.parser.feed(data):
                cur = shell.current
                if piece.data and cur is not None and (cur.state == "running" or cur.accepted) and not cur.hidden:
                    self._capture(cur, piece.data)
                    cur.last_output = time.monotonic()
                if kept is not None and not shell.muted and not prompt_after:
                    kept += piece.data
                if piece.mark is not None:
                    muted = shell.muted
                    self._on_mark(shell, piece.mark)
                    # Readline announces it reads, then draws the prompt: that prompt (usually the
                    # rest of this chunk) would stand after the one already shown.
                    prompt_after = prompt_after or (muted and not shell.muted)
        if kept is not None:
            if not kept:
                return
            data = bytes(kept)
        self.listener.shell_output(shell.name, data)

    def _capture(self, cmd: _Command, data: bytes) -> None:
        room = self.output_limit - len(cmd.raw)
        if len(data) > room:
            cmd.truncated = True
            data = data[: max(room, 0)]
        cmd.raw += data

    def _on_mark(self, shell: _Shell, mark: Mark) -> None:
        cmd = shell.current
        if mark.kind == "R":
            if shell.at_prompt is not None:
                shell.at_prompt = None
                shell.muted = False
                shell.ready.set()
                self._start_next(shell)
            elif shell.late_read:
                shell.late_read = False  # the prompt's own, after the ticker went on without it
            elif cmd is not None and (cmd.state == "typed" or cmd.incomplete):
                # Readline reads again and the line did not start: it was not run (a history expansion
                # failed) or a Ctrl-C did not reach bash, unless a continuation prompt, readline's end
                # or an end mark follows (the ticker decides).
                cmd.reread_at = time.monotonic()
                if cmd.accepted:
                    cmd.accepted = False
                    if cmd.raw.endswith(READING):
                        del cmd.raw[-len(READING):]
        elif mark.kind == "L":
            if cmd is not None:
                cmd.reread_at = None
                if cmd.state == "typed":
                    cmd.accepted = True
        elif mark.kind == "D":
            shell.cwd = mark.cwd or shell.cwd
            # Readline is about to read: the next command goes in once it says so.
            shell.ready.clear()
            shell.at_prompt = time.monotonic()
            if cmd is not None and cmd.state in ("typed", "running"):
                if cmd.incomplete:
                    self._finish_incomplete(shell, cmd)
                else:
                    status = cmd.stop_reason or ("succeeded" if mark.exit_code == 0 else "failed")
                    self._finish(shell, cmd, status, mark.exit_code, cwd=shell.cwd)
        elif mark.kind == "C":
            # A command line runs now, ours or one a person typed: nothing more is typed
            # until its end mark and the next prompt.
            shell.ready.clear()
            if cmd is not None and cmd.state == "typed":
                cmd.state = "running"
                cmd.raw = bytearray()  # readline's leftovers: the command's output starts here
                cmd.truncated = False
                if cmd.stopped_at is not None:
                    cmd.stopped_at = 0
                cmd.started_mono = time.monotonic()
                cmd.started_wall = time.time()
                if not cmd.hidden:
                    self.listener.command_started(shell.name, cmd.id, cmd.started_wall)
        elif mark.kind == "P":
            if cmd is None:
                shell.ready.clear()  # a person's line wants more: a command typed now would join it
            else:
                cmd.reread_at = None
            if cmd is not None and cmd.state in ("typed", "running") and not cmd.incomplete:
                # The whole paste was read and bash still wants more: it never will. (Running: bash ran
                # the first lines of a multi-line command before it found the rest incomplete.)
                cmd.incomplete = True
                cmd.escalate_at = time.monotonic() + ESCALATE_AFTER
                self._ctrl_c(shell)
        elif mark.kind == "X":
            shell.exit_code = mark.exit_code
            if cmd is not None:
                status = "succeeded" if mark.exit_code == 0 else "failed"
                self._finish(shell, cmd, cmd.stop_reason or status, mark.exit_code, cwd=shell.cwd,
                             reason="the shell exited")

    def _on_event(self, name: str, args: list[str]) -> None:
        if name in ("%window-close", "%unlinked-window-close") and args:
            with self._lock:
                shell = self._by_window.get(args[0])
            if shell is not None:
                self._shell_gone(shell, "the shell exited")
                # Off the reader thread: what the shell left running is killed with its sandbox.
                threading.Thread(target=self.sandbox.release, daemon=True, name="sandbox-release",
                                 args=(shell.name, shell.box.token if shell.box else None)).start()
        elif name == "%session-changed":
            self._attached.set()
        elif name in ("%exit", "%closed"):
            if not self._stop.is_set():
                self.listener.server_lost()

    # -- internals --------------------------------------------------------------

    def _finish(self, shell: _Shell, cmd: _Command, status: str, exit_code: int | None, *,
                cwd: str | None, reason: str = "") -> None:
        now_mono, now = time.monotonic(), time.time()
        if shell.current is cmd:
            shell.current = None
        if cmd.hidden:
            cmd.done.set()  # its caller reads what it wrote
            return
        duration = (now_mono - cmd.started_mono) * 1000 if cmd.started_mono else None
        if cmd.started_mono is None:
            # What bash said of a line it did not start (a syntax error), without readline's line ends.
            cmd.raw = bytearray(cmd.raw.lstrip(b"\r")) if cmd.raw.strip(b"\r\n") else bytearray()
        if not reason and status in ("timed_out", "interrupted"):
            reason = cmd.stop_note or status.replace("_", " ")
        if exit_code == 137 and shell.box is not None and shell.box.sandboxed:
            reason = self._oom_reason(shell) or reason
        result = CommandResult(
            command_id=cmd.id, status=status, exit_code=exit_code, raw=bytes(cmd.raw),
            truncated=cmd.truncated, cwd=cwd, started_at=cmd.started_wall, finished_at=now,
            duration_ms=round(duration, 3) if duration is not None else None, reason=reason,
            stopped_at=cmd.stopped_at,
        )
        self.listener.command_finished(shell.name, result)

    def _finish_incomplete(self, shell: _Shell, cmd: _Command) -> None:
        cmd.raw = bytearray(b"vterm: incomplete command: the shell wanted more input "
                            b"(an unclosed quote, bracket or here-document?)\n")
        self._finish(shell, cmd, "failed", 2, cwd=shell.cwd, reason="incomplete command")

    def _oom_reason(self, shell: _Shell) -> str:
        """A command killed (137) by its sandbox's memory limit says so."""
        usage = self.sandbox.usage(shell.name)
        if usage is None or usage.oom_kills <= shell.oom_kills:
            return ""
        shell.oom_kills = usage.oom_kills
        return f"killed: out of memory (limit {_size(shell.box.spec.memory_bytes)})"

    def _shell_gone(self, shell: _Shell, reason: str) -> None:
        with self._lock:
            if self._shells.get(shell.name) is not shell:
                return
            del self._shells[shell.name]
            self._by_pane.pop(shell.pane_id, None)
            self._by_window.pop(shell.window_id, None)
            pending = ([shell.current] if shell.current else []) + list(shell.queue)
            shell.current = None
            shell.queue.clear()
        self._forget(shell.window_id)
        shell.ready.set()  # a create_shell waiting for its first prompt learns it will not come
        for cmd in pending:
            self._finish(shell, cmd, "interrupted", shell.exit_code, cwd=shell.cwd, reason=reason)
        self.listener.shell_exited(shell.name, reason)

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK):
            self.tick()

    def tick(self) -> None:
        """Prompts that never said readline reads, pending resizes, timeouts, ignored Ctrl-Cs."""
        now = time.monotonic()
        stubborn = []
        with self._lock:
            for shell in list(self._shells.values()):
                if shell.at_prompt is not None and now - shell.at_prompt > PROMPT_GRACE:
                    # No bracketed-paste switch seen (a user's inputrc?): go on anyway.
                    shell.at_prompt = None
                    shell.late_read = True
                    shell.muted = False
                    shell.ready.set()
                    self._start_next(shell)
                if shell.resize_until is not None:
                    self._start_next(shell)
                cmd = shell.current
                if cmd is None:
                    continue
                if cmd.stop_reason is None and cmd.deadline is not None and now >= cmd.deadline:
                    self._stop_command(shell, cmd, "timed_out", f"timed out after {cmd.timeout:g} s")
                elif (cmd.stop_reason is None and cmd.idle_timeout and cmd.state == "running"
                      and now - (cmd.last_output or cmd.started_mono) >= cmd.idle_timeout):
                    self._stop_command(shell, cmd, "timed_out", f"no output for {cmd.idle_timeout:g} s")
                elif cmd.reread_at is not None and now - cmd.reread_at > REREAD_GRACE:
                    cmd.reread_at = None
                    if cmd.escalate_at is not None:
                        # Our Ctrl-C came while readline was busy: bash holds it until the next one.
                        self._ctrl_c(shell)
                    else:
                        self._finish(shell, cmd, "failed", 1, cwd=shell.cwd, reason=NOT_RUN)
                        self._start_next(shell)
                elif cmd.escalate_at is not None and now >= cmd.escalate_at:
                    if cmd.escalations >= ESCALATE_ROUNDS:
                        self._give_up(shell, cmd)
                        continue
                    cmd.escalations += 1
                    cmd.escalate_at = now + ESCALATE_AFTER
                    if cmd.state == "typed" or cmd.incomplete:  # bash itself holds it: Ctrl-C again
                        self._ctrl_c(shell)
                    else:  # Ctrl-C was ignored: end the shell's children, keep the shell
                        stubborn.append(shell)
        for shell in stubborn:
            self._kill_children(shell)

    def _give_up(self, shell: _Shell, cmd: _Command) -> None:
        """A stopped command the shell never came back from (Ctrl-C ignored, no children to kill) ends
        anyway. If it had started, what comes next waits for the shell's prompt rather than being typed
        into whatever holds it. Under the lock."""
        log.warning("shell %s: command %s did not stop; it ends, the shell is left as it is", shell.name, cmd.id)
        if cmd.incomplete:
            self._finish_incomplete(shell, cmd)
            return
        if cmd.state == "running":
            shell.ready.clear()
            why = "the shell ignored Ctrl-C, had no process to kill and has not come back to its prompt " \
                  "(later commands wait for it)"
        else:
            why = "the shell did not take the Ctrl-C"
        self._finish(shell, cmd, cmd.stop_reason, None, cwd=shell.cwd, reason=f"{cmd.stop_note}; it did not stop: {why}")
        self._start_next(shell)

    def _kill_children(self, shell: _Shell) -> None:
        try:
            pid = int(self._call(f"display-message -p -t {shell.pane_id} '#{{pane_pid}}'")[0])
            pid = _bash_below(pid)  # in a sandbox, bash runs under bwrap
            out = subprocess.run(["pkill", "-KILL", "-P", str(pid)], capture_output=True, timeout=5)
            log.info("killed children of shell %s (pkill rc %s)", shell.name, out.returncode)
        except Exception:
            log.exception("could not kill the children of shell %s", shell.name)

    def _adopt(self) -> list[ShellInfo]:
        # The window options are where a driver before the hidden environment kept them.
        fmt = ("#{window_id} #{pane_id} #{pane_tty} #{window_name} #{@vterm_nonce} #{@vterm_epoch} #{@vterm_cmd} "
               "#{pane_pid} #{pane_current_command} #{pane_current_path}")
        lines = self._call(f"list-panes -s -t {TMUX_SESSION} -F {quote(fmt)}")
        kept = self._kept()
        sizes = self._call(f"list-windows -t {TMUX_SESSION} -F '#{{window_id}} #{{window_width}} #{{window_height}}'")
        size_of = {w: (int(c), int(r)) for w, c, r in (s.split() for s in sizes)}
        # After the sizes were read: it resizes every window that has no size of its own for this client.
        self._call("refresh-client -C {}x{}".format(*CLIENT_SIZE))
        adopted = []
        for line in lines:
            parts = line.split(" ", 9)
            if len(parts) < 10 or not parts[3].startswith(WINDOW_PREFIX):
                continue
            window_id, pane_id, tty, wname, nonce, epoch, last_cmd, pid, current, path = parts
            mine = kept.get(window_id, {})
            nonce, epoch, last_cmd = mine.get("nonce", nonce), mine.get("epoch", epoch), mine.get("cmd", last_cmd)
            if not nonce:
                continue
            cols, rows = size_of.get(window_id, (80, 24))
            name = wname[len(WINDOW_PREFIX):]
            box = self.sandbox.find(name)
            if box is not None:
                path = box.inner_path(path)
            elif not isinstance(self.sandbox, NoSandbox):
                # Made before sandboxing was turned on: it runs as the service. Not adopted; the
                # reconcile treats its session as one whose shell is gone.
                log.warning("shell %s runs without a sandbox: ended", name)
                self._tmux_ok("kill-window", "-t", window_id)
                continue
            usage = self.sandbox.usage(name)
            shell = _Shell(name=name, window_id=window_id, pane_id=pane_id, tty=tty,
                           pid=int(pid) if pid.isdigit() else 0,
                           parser=MarkParser(nonce), cols=cols, rows=rows, cwd=path,
                           epoch=int(epoch) if epoch.isdigit() else 0, last_command=last_cmd, box=box,
                           oom_kills=usage.oom_kills if usage else 0)
            # A program in the foreground, or bash itself running a command (a loop of builtins):
            # readline keeps the terminal non-canonical only while it waits at the prompt.
            busy = current != "bash" or _tty_canonical(tty) is True
            if not busy:
                shell.ready.set()  # idle at its prompt; otherwise the next end mark readies it
            with self._lock:
                self._register(shell)
            self._apply_size(shell, new=True)
            info = self._info(shell)
            info.busy = busy
            adopted.append(info)
        return adopted

    def _register(self, shell: _Shell) -> None:
        # Called under the lock.
        self._shells[shell.name] = shell
        self._by_pane[shell.pane_id] = shell
        self._by_window[shell.window_id] = shell
        for data in self._unclaimed.pop(shell.pane_id, []):
            for piece in shell.parser.feed(data):
                if piece.mark is not None:
                    self._on_mark(shell, piece.mark)

    @staticmethod
    def _keep_cmd(window_id: str, key: str, value: str) -> str:
        return f"set-environment -h -t {KEEP_SESSION} __vterm_{key}_{window_id.lstrip('@')} {quote(value)}"

    def _forget(self, window_id: str) -> None:
        if self._control is None or self._control.closed.is_set():
            return
        for key in WINDOW_ENV_KEYS:
            self._send_nowait(f"set-environment -u -t {KEEP_SESSION} __vterm_{key}_{window_id.lstrip('@')}")

    def _kept(self) -> dict[str, dict[str, str]]:
        """What _keep_cmd kept, by window id."""
        out: dict[str, dict[str, str]] = {}
        for line in self._call(f"show-environment -h -t {KEEP_SESSION}"):
            name, eq, value = line.partition("=")
            key, _, number = name[len("__vterm_"):].rpartition("_")
            if eq and name.startswith("__vterm_") and key in WINDOW_ENV_KEYS and number.isdigit():
                out.setdefault("@" + number, {})[key] = value
        return out

    def _apply_size(self, shell: _Shell, *, new: bool = False) -> None:
        if new and (shell.cols, shell.rows) == CLIENT_SIZE:
            return  # no size of its own for this client yet: it has the client's
        # Per-window size for this control client (tmux >= 3.2); "window-size manual"
        # would be simpler but crashes tmux 3.3a with a control client attached.
        self._call(f"refresh-client -C {shell.window_id}:{shell.cols}x{shell.rows}")

    def _info(self, shell: _Shell) -> ShellInfo:
        return ShellInfo(name=shell.name, window_id=shell.window_id, pane_id=shell.pane_id,
                         cwd=shell.cwd, cols=shell.cols, rows=shell.rows, busy=False, epoch=shell.epoch,
                         last_command=shell.last_command)

    def _get(self, name: str) -> _Shell:
        with self._lock:
            shell = self._shells.get(name)
        if shell is None:
            raise ShellError(f"no shell {name} on this backend")
        return shell

    def _shell_call(self, shell: _Shell, command: str) -> list[str]:
        """_call for a command about one shell: its pane gone meanwhile (the shell exited, its window
        not yet forgotten) is the ShellError of a shell that is not here."""
        try:
            return self._call(command)
        except TmuxCommandError as exc:
            if "can't find" in str(exc):
                raise ShellError(f"shell {shell.name} has exited") from exc
            raise

    def _ctrl_c(self, shell: _Shell) -> None:
        self._send_nowait(f"send-keys -t {shell.pane_id} C-c")

    def _send_nowait(self, command: str) -> None:
        if self._control is None:
            raise ControlClosed("not started")
        fut = self._control.send(command)
        fut.add_done_callback(_log_failure(command))

    def _call(self, command: str, timeout: float = 10.0) -> list[str]:
        # Never under self._lock: the reply is read by the thread that needs it.
        if self._control is None:
            raise ControlClosed("not started")
        return self._control.call(command, timeout)

    def _tmux_argv(self, *args: str) -> list[str]:
        return ["tmux", "-S", self.socket_path, *args]

    def _tmux_ok(self, *args: str) -> bool:
        res = subprocess.run(self._tmux_argv(*args), env=self._server_env(),
                             capture_output=True, timeout=10)
        return res.returncode == 0

    def _server_env(self) -> dict[str, str]:
        # The tmux server's environment becomes every shell's: built, not inherited.
        return dict(self.shell_env)


def prepare_dir(path: str) -> None:
    """The directory of a backend's tmux server(s): private, with the rc and tmux.conf they use,
    without the hand-over files a previous worker left (it died between writing and removing one)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # nobody else may reach the sockets
    _write_if_changed(os.path.join(path, "vterm.bashrc"), BASHRC)
    _write_if_changed(os.path.join(path, "tmux.conf"), TMUX_CONF)
    for left in glob.glob(os.path.join(path, "x-*")):
        _unlink(left)


def release_others(sandbox: Sandbox | NoSandbox, keep: set[str]) -> None:
    """What a shell gone meanwhile started (daemons, double forks) ends with its sandbox."""
    for name in sandbox.names():
        if name not in keep:
            sandbox.release(name)


def _size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _log_failure(command: str):
    def check(fut) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("tmux command failed: %s: %s", command[:80], exc)
    return check


def _bash_below(pid: int) -> int:
    """The first bash at or below ``pid`` (the pane's process), else ``pid``."""
    todo = [pid]
    while todo:
        p = todo.pop(0)
        try:
            with open(f"/proc/{p}/comm") as f:
                if f.read().strip() == "bash":
                    return p
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return pid


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _own_terminal(tty: str, uid: int, gid: int) -> None:
    """Give a sandboxed shell's user its terminal, as a login does: tmux made it root's, so the
    shell could use it through the descriptors it was given but not reopen it by name."""
    try:
        os.chown(tty, uid, gid)
    except OSError as exc:
        log.warning("could not give %s to uid %s: %s", tty, uid, exc)


def _tty_size(tty: str) -> tuple[int, int] | None:
    """(rows, cols) the kernel has for a terminal, or None when it cannot be read."""
    try:
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        rows, cols = struct.unpack("hhhh", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        return rows, cols
    except OSError:
        return None
    finally:
        os.close(fd)


def _tty_canonical(tty: str) -> bool | None:
    """Whether a terminal is in canonical (line) mode, or None when it cannot be read."""
    try:
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return bool(termios.tcgetattr(fd)[3] & termios.ICANON)
    except termios.error:
        return None
    finally:
        os.close(fd)


def _set_tty_size(tty: str, rows: int, cols: int) -> None:
    try:
        fd = os.open(tty, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("hhhh", rows, cols, 0, 0))
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path) as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        pass
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
