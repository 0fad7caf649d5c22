"""A backend's shells spread over several tmux servers, behind the one driver interface.

tmux walks every window and pane of a server on every turn of its event loop (about 3.1 k
instructions per window per command: docs/bench.md, "tmux cost as windows grow"), and spends it on
the command's path. A pool holds at most ``per_server`` shells in each server, so that walk stays
short however many shells the backend holds. Each server has its own socket (``tmux-0.sock``,
``tmux-1.sock``, ... in the backend's tmux directory) and its own ``TmuxDriver``; every call about a
shell goes to the driver of the server that holds it. A new shell goes to the least-filled server
with room; a server is started when all are full. ``per_server`` 0: one server holds them all.

Like the driver, this knows nothing of Django: it reports through the driver's ``Listener``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from ..sandbox import Box, NoSandbox, Sandbox
from .driver import (
    ENV_CAPTURE_TIMEOUT,
    TICK,
    Listener,
    Screen,
    ShellError,
    ShellInfo,
    TmuxDriver,
    prepare_dir,
    release_others,
)

log = logging.getLogger(__name__)

# A server's socket: tmux-<n>.sock; tmux.sock is the one a worker before pools used (adopted as is).
SOCKET_RE = re.compile(r"^tmux(?:-(\d+))?\.sock$")
SOCKET_GLOB = "tmux*.sock"


# -- placement and names (pure) ------------------------------------------------

def choose_server(counts: list[int], per_server: int) -> int | None:
    """Index of the least-filled server with room for one more shell (the first of equals), or None
    when every server is full (or there is none). ``per_server`` 0: no limit."""
    best = None
    for i, n in enumerate(counts):
        if (per_server <= 0 or n < per_server) and (best is None or n < counts[best]):
            best = i
    return best


def socket_name(index: int) -> str:
    return f"tmux-{index}.sock"


def next_socket_name(taken: list[str]) -> str:
    """The socket of a new server: the lowest tmux-<n>.sock not in ``taken`` (file names)."""
    used = {int(m.group(1)) for m in map(SOCKET_RE.match, taken) if m and m.group(1) is not None}
    n = 0
    while n in used:
        n += 1
    return socket_name(n)


def _order(name: str) -> tuple[int, int]:
    m = SOCKET_RE.match(name)
    return (0, -1) if m.group(1) is None else (1, int(m.group(1)))


def server_sockets(tmux_dir: str | os.PathLike) -> list[Path]:
    """The server sockets in a backend's tmux directory (tmux.sock first, then by number)."""
    found = [p for p in Path(tmux_dir).glob(SOCKET_GLOB) if SOCKET_RE.match(p.name)]
    return sorted(found, key=lambda p: _order(p.name))


def all_server_sockets(data_dir: str | os.PathLike) -> list[Path]:
    """Every backend's server sockets under ``data_dir/tmux`` (for cleanup and measurement)."""
    return [s for d in sorted(Path(data_dir, "tmux").glob("*")) if d.is_dir() for s in server_sockets(d)]


def server_answers(sock: str | os.PathLike, env: dict[str, str] | None = None) -> bool:
    """Whether a tmux server is listening on ``sock`` (a socket file outlives a server killed hard)."""
    res = subprocess.run(["tmux", "-S", str(sock), "list-sessions"], env=env, capture_output=True, timeout=10,
                         check=False)
    return res.returncode == 0


# -- the pool -----------------------------------------------------------------

class _ServerListener:
    """What one server's driver reports, passed on; its loss and its shells' exits also tell the pool."""

    def __init__(self, pool: TmuxPool, listener: Listener) -> None:
        self.pool, self.listener = pool, listener
        self.driver: TmuxDriver | None = None
        # The hot ones straight through: no extra call per output chunk.
        self.shell_output = listener.shell_output
        self.command_started = listener.command_started
        self.command_finished = listener.command_finished

    def shell_exited(self, name: str, reason: str) -> None:
        self.pool._forget(name, self.driver)
        self.listener.shell_exited(name, reason)

    def server_lost(self) -> None:
        self.listener.server_lost()


class TmuxPool:
    """The TmuxDriver interface the backend uses, over one or more tmux servers in one directory."""

    def __init__(self, tmux_dir: str, listener: Listener, *, shell_env: dict[str, str], per_server: int = 100,
                 output_limit: int = 1 << 20, source_user_bashrc: bool = True,
                 sandbox: Sandbox | None = None) -> None:
        self.dir = tmux_dir
        self.listener = listener
        self.per_server = per_server
        self.shell_env = dict(shell_env)
        self._driver_args = {"shell_env": shell_env, "output_limit": output_limit,
                             "source_user_bashrc": source_user_bashrc}
        self.sandbox = sandbox or NoSandbox(tmux_dir, os.path.join(tmux_dir, "vterm.bashrc"))
        # _lock guards _drivers and _where, and is never held while tmux is waited for: a driver's
        # reader thread takes it (a shell's exit) while its driver starts. _grow: one server started
        # at a time.
        self._lock = threading.Lock()
        self._grow = threading.Lock()
        self._drivers: list[TmuxDriver] = []
        # shell name -> the driver of its server, from placement on (before its shell exists).
        self._where: dict[str, TmuxDriver] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> list[ShellInfo]:
        """Adopt the shells of every server found in the directory (a restarted worker keeps them);
        start one server if none answers."""
        prepare_dir(self.dir)
        adopted: list[ShellInfo] = []
        for sock in server_sockets(self.dir):
            if not server_answers(sock, self.shell_env):
                os.unlink(sock)  # its server was killed hard: its shells are gone with it
                continue
            adopted += self._start_server(str(sock))
        if not self._drivers:
            self._start_server(os.path.join(self.dir, socket_name(0)))
        release_others(self.sandbox, set(self._where))
        self._ticker = threading.Thread(target=self._tick_loop, name="tmux-ticker", daemon=True)
        self._ticker.start()
        return adopted

    def _start_server(self, sock: str, replaces: TmuxDriver | None = None) -> list[ShellInfo]:
        """Start (or attach to) the server on ``sock`` and adopt its shells (in place of ``replaces``,
        a lost one). Under self._grow or at start."""
        relay = _ServerListener(self, self.listener)
        driver = TmuxDriver(sock, relay, sandbox=self.sandbox, **self._driver_args)
        relay.driver = driver
        try:
            adopted = driver.start(alone=False)
        except BaseException:
            driver.close()
            raise
        with self._lock:
            if replaces is not None:
                self._drivers.remove(replaces)
            self._drivers.append(driver)
            for info in adopted:
                self._where[info.name] = driver
        log.info("tmux server %s: %d shell(s) adopted", os.path.basename(sock), len(adopted))
        return adopted

    def close(self) -> None:
        """Detach from every server; they and their shells live on for the next worker."""
        self._stop.set()
        for driver in list(self._drivers):
            driver.close()

    def kill_server(self) -> None:
        """End every server (and so every shell)."""
        for driver in list(self._drivers):
            driver.kill_server()

    @property
    def alive(self) -> bool:
        return all(d.alive for d in list(self._drivers))

    @property
    def summary(self) -> str:
        """For the backend's log: the directory of its servers, and how many."""
        return f"{self.dir} ({len(self._drivers)} server(s), at most {self.per_server or 'any'} shells each)"

    @property
    def bash(self) -> str:
        return self._drivers[0].bash if self._drivers else "/bin/bash"

    @property
    def drivers(self) -> list[TmuxDriver]:
        return list(self._drivers)

    def restart_lost(self) -> list[str]:
        """Start again, each on its own socket, the servers whose connection was lost; the others
        and their shells are left alone. Returns the names of the shells the lost servers held.
        Raises if one cannot be started (it stays lost: a later call tries it again)."""
        lost_names: list[str] = []
        with self._grow:
            for driver in [d for d in self.drivers if not d.alive]:
                with self._lock:
                    count = sum(d is driver for d in self._where.values())
                log.error("tmux server %s lost (%d shell(s)); starting it again",
                          os.path.basename(driver.socket_path), count)
                try:
                    driver.close()
                except Exception:
                    log.warning("closing the lost tmux connection failed", exc_info=True)
                self._start_server(driver.socket_path, replaces=driver)
                with self._lock:
                    # Those a server that lived on still had were adopted again by the new driver.
                    lost = [n for n, d in self._where.items() if d is driver]
                    for n in lost:
                        del self._where[n]
                lost_names += lost
            with self._lock:
                keep = set(self._where)
            release_others(self.sandbox, keep)
        return lost_names

    # -- placement and routing ----------------------------------------------------

    def shell_names(self) -> list[str]:
        return [n for d in list(self._drivers) for n in d.shell_names()]

    def shell_pids(self) -> dict[str, int]:
        pids: dict[str, int] = {}
        for d in list(self._drivers):
            pids.update(d.shell_pids())
        return pids

    def server_pids(self) -> list[int]:
        """The pid of each tmux server (for the backend's CPU and memory figures)."""
        return [d.server_pid for d in list(self._drivers) if d.server_pid]

    def shell_counts(self) -> list[int]:
        """Shells per server, in the order of ``drivers`` (those being created included)."""
        with self._lock:
            return self._counts()

    def _counts(self) -> list[int]:
        counts = dict.fromkeys(self._drivers, 0)
        for driver in self._where.values():
            if driver in counts:
                counts[driver] += 1
        return list(counts.values())

    def create_shell(self, name: str, **kwargs) -> ShellInfo:
        """TmuxDriver.create_shell, on the least-filled server with room (a new one if all are full)."""
        driver = self._place(name)
        try:
            return driver.create_shell(name, **kwargs)
        except BaseException:
            self._forget(name, driver)
            raise

    def _place(self, name: str) -> TmuxDriver:
        """The server a new shell goes to, counted as its own from now on (concurrent starts spread)."""
        while True:
            with self._lock:
                if name in self._where:
                    raise ShellError(f"shell {name} exists")
                i = choose_server(self._counts(), self.per_server)
                if i is not None:
                    driver = self._drivers[i]
                    self._where[name] = driver
                    return driver
            with self._grow:
                with self._lock:
                    full = choose_server(self._counts(), self.per_server) is None  # none added meanwhile
                    taken = [os.path.basename(d.socket_path) for d in self._drivers]
                if full:
                    self._start_server(os.path.join(self.dir, next_socket_name(taken)))

    def _driver_of(self, name: str) -> TmuxDriver:
        driver = self._where.get(name)
        if driver is None:
            raise ShellError(f"no shell {name} on this backend")
        return driver

    def _forget(self, name: str, driver: TmuxDriver | None) -> None:
        with self._lock:
            if self._where.get(name) is driver:
                del self._where[name]

    def kill_shell(self, name: str, reason: str = "session ended") -> None:
        driver = self._where.get(name)
        if driver is not None:
            driver.kill_shell(name, reason)
            # Its exit may be being reported on the reader thread still: its place is free now.
            self._forget(name, driver)

    # The calls about one shell: TmuxDriver's, on the server that holds the shell.

    def shell_info(self, name: str) -> ShellInfo:
        return self._driver_of(name).shell_info(name)

    def drop_queued(self, name: str) -> list[str]:
        return self._driver_of(name).drop_queued(name)

    def adopt_command(self, name: str, command_id: str, started_at: float | None, *,
                      timeout: float | None = None, idle_timeout: float | None = None) -> None:
        return self._driver_of(name).adopt_command(name, command_id, started_at, timeout=timeout,
                                                   idle_timeout=idle_timeout)

    def resize(self, name: str, cols: int, rows: int) -> None:
        return self._driver_of(name).resize(name, cols, rows)

    def send_text(self, name: str, text: str) -> None:
        return self._driver_of(name).send_text(name, text)

    def send_keys(self, name: str, keys: list[str]) -> None:
        return self._driver_of(name).send_keys(name, keys)

    def screen(self, name: str, *, escapes: bool = False, history: int = 0) -> Screen:
        return self._driver_of(name).screen(name, escapes=escapes, history=history)

    def current_cwd(self, name: str) -> str:
        return self._driver_of(name).current_cwd(name)

    def job_context(self, name: str) -> tuple[Box, int | None, str]:
        return self._driver_of(name).job_context(name)

    def run(self, name: str, command_id: str, text: str, timeout: float | None = None,
            idle_timeout: float | None = None) -> None:
        return self._driver_of(name).run(name, command_id, text, timeout, idle_timeout)

    def interrupt(self, name: str, command_id: str | None = None) -> bool:
        return self._driver_of(name).interrupt(name, command_id)

    def capture_env(self, names: list[str], timeout: float = ENV_CAPTURE_TIMEOUT) -> dict[str, dict[str, str] | None]:
        """TmuxDriver.capture_env: every server's shells asked at once, then read."""
        by_driver: dict[TmuxDriver, list[str]] = {}
        for name in names:
            driver = self._where.get(name)
            if driver is not None:
                by_driver.setdefault(driver, []).append(name)
        asked = [(d, d.ask_env(group, timeout)) for d, group in by_driver.items()]
        deadline = time.monotonic() + timeout
        out: dict[str, dict[str, str] | None] = dict.fromkeys(names)
        for driver, ask in asked:
            out.update(driver.read_env(ask, deadline))
        return out

    def _tick_loop(self) -> None:
        # One ticker for every server's driver, not a thread each doing the same.
        while not self._stop.wait(TICK):
            for driver in list(self._drivers):
                try:
                    driver.tick()
                except Exception:
                    log.exception("tmux tick failed (%s)", driver.socket_path)
