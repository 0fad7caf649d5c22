"""terminado (Jupyter's terminal backend) as a peer for the WebSocket figures: a minimal server of its
own on 127.0.0.1, one bash per WebSocket (UniqueTermManager), as its published package documents.

    python -m vterm_project.bench.peer_terminado PORT   # serve until killed (what ``TerminadoServer`` runs)

Needs the ``bench`` extra (``pip install -e ".[bench]"``: terminado, tornado).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Self

from .terminal_figures import TerminadoTerminal

# The same clean bash for every peer: no user rc, a plain prompt.
SHELL = ["bash", "--norc", "--noprofile"]


def serve(port: int) -> None:
    import tornado.ioloop
    import tornado.web
    from terminado import TermSocket, UniqueTermManager

    manager = UniqueTermManager(shell_command=SHELL, extra_env={"PS1": "$ ", "TERM": "xterm-256color"})
    app = tornado.web.Application([(r"/websocket", TermSocket, {"term_manager": manager})])
    app.listen(port, "127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


class TerminadoServer:
    """The server as a child process, for the span of a ``with`` block."""

    def __init__(self, port: int, cwd: str) -> None:
        self.port, self.cwd = port, cwd
        self.proc: subprocess.Popen | None = None
        self.log = os.path.join(cwd, "terminado.log")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"

    def __enter__(self) -> Self:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vterm_project.bench.peer_terminado", str(self.port)],
                cwd=self.cwd, env={**os.environ, "HOME": self.cwd}, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    with open(self.log, errors="replace") as log:
                        raise RuntimeError(f"terminado did not start: {log.read()[-500:]}") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # terminado ends its shells (SIGHUP) on the way out
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def terminal(self) -> TerminadoTerminal:
        return TerminadoTerminal(self.url)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
