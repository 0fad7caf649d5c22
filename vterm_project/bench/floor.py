"""The floor: ``true`` typed into a bare bash in a tmux pane over a control-mode pipe.

No vterm in between: a private tmux server, a bash with only a prompt hook that prints
its exit code, and tmux's control-mode client from ``workers.tmux.control`` (the pipe
reader, no driver logic). A sample is the time from writing ``send-keys`` to reading
the end mark. Each command is typed only once readline is reading again (bracketed
paste switched on), as a real client would.

``driver_latency`` measures the same through ``TmuxDriver`` (vterm's own layer on
that pipe), to show what the driver adds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time

from workers.tmux.control import ControlClient
from workers.tmux.shell import READING

_MARK = b"\x1b]133;D;"
_RC = "PS1='$ '\nPROMPT_COMMAND='printf \"\\033]133;D;%s\\007\" $?'\n"


def _tmux_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
            "TERM": "xterm-256color", "LANG": "C.UTF-8"}


class _Waiter:
    """Collects a pane's bytes; wakes the sampler on an end mark and on readline reading."""

    def __init__(self) -> None:
        self.buf = b""
        self.cond = threading.Condition()

    def feed(self, pane: str, data: bytes) -> None:
        with self.cond:
            self.buf += data
            self.cond.notify_all()

    def wait_for(self, needle: bytes, timeout: float = 5.0) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while needle not in self.buf:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            self.buf = self.buf[self.buf.index(needle) + len(needle):]
            return True


def floor_latency(samples: int = 200, gap: float = 0.0) -> list[float]:
    """Milliseconds per ``true`` on bare bash in tmux over control mode, ``samples`` of them.

    With ``gap`` 0 each command follows the last one's prompt at once (the strict floor);
    with a gap the processes go idle in between and each sample pays their wake-ups too.
    """
    tmp = tempfile.mkdtemp(prefix="vterm-floor-")
    sock, rc = os.path.join(tmp, "tmux.sock"), os.path.join(tmp, "rc")
    with open(rc, "w") as f:
        f.write(_RC)
    env = _tmux_env()
    subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-s", "floor", "-x", "120",
                    "-y", "40", "bash", "--noprofile", "--rcfile", rc, "-i"], env=env, check=True, timeout=10)
    waiter = _Waiter()
    client = ControlClient(["tmux", "-S", sock, "-C", "attach-session", "-t", "floor"], env=env,
                           on_output=waiter.feed, on_event=lambda name, args: None)
    try:
        pane = client.call("display-message -p '#{pane_id}'")[0]
        out: list[float] = []
        waiter.wait_for(READING)
        for i in range(samples + 5):
            t0 = time.perf_counter()
            client.send(f"send-keys -t {pane} -l 'true\r'")
            if not waiter.wait_for(_MARK):
                raise RuntimeError("the floor shell did not answer")
            dt = (time.perf_counter() - t0) * 1000
            waiter.wait_for(READING)
            if i >= 5:  # the first few warm the caches
                out.append(dt)
            time.sleep(gap)
        return out
    finally:
        client.close()
        subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, capture_output=True, env=env)
        shutil.rmtree(tmp, ignore_errors=True)


class _DriverListener:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.exit_code: int | None = None

    def shell_output(self, name: str, data: bytes) -> None:
        pass

    def command_started(self, name: str, command_id: str, started_at: float) -> None:
        pass

    def command_finished(self, name: str, result) -> None:
        self.exit_code = result.exit_code
        self.done.set()

    def shell_exited(self, name: str, reason: str) -> None:
        pass

    def server_lost(self) -> None:
        pass


def driver_latency(samples: int = 100, gap: float = 0.01) -> list[float]:
    """Milliseconds per ``true`` through vterm's TmuxDriver alone (no web, queue or database)."""
    from workers.tmux.driver import TmuxDriver

    tmp = tempfile.mkdtemp(prefix="vterm-floor-driver-")
    listener = _DriverListener()
    driver = TmuxDriver(os.path.join(tmp, "tmux.sock"), listener, shell_env=_tmux_env(),
                        source_user_bashrc=False)
    driver.start()
    try:
        driver.create_shell("floor", cwd=tmp, env={}, cols=120, rows=40)
        out: list[float] = []
        for i in range(samples + 5):
            listener.done.clear()
            t0 = time.perf_counter()
            driver.run("floor", f"c{i}", "true")
            if not listener.done.wait(5) or listener.exit_code != 0:
                raise RuntimeError("the driver's shell did not answer")
            if i >= 5:
                out.append((time.perf_counter() - t0) * 1000)
            time.sleep(gap)
        return out
    finally:
        driver.close()
        driver.kill_server()
        shutil.rmtree(tmp, ignore_errors=True)
