"""One of several Daphne processes on one port: `python -m vterm_project.web_listen HOST PORT DAPHNE_ARGS...`.

A Daphne process runs Python on one core at a time, and at a few ms of CPU per command that one
core is the ceiling of the command rate (tests/bench/command_cost.py). `make run` therefore starts
VTERM_WEB_PROCESSES of them (vterm_project/devstack.py), as the Helm chart runs several web pods.
Each binds the port with SO_REUSEPORT (Linux: only processes of the same user may join) and
hands the listening socket to Daphne (`--fd`); the kernel spreads new connections over the
processes. A process that exits takes only its own connections with it; the others keep serving,
and supervisord starts it again.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

BACKLOG = 1024


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    return sock


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.splitlines()[0])
    host, port, *daphne_args = sys.argv[1:]
    sock = listen(host, int(port))
    os.set_inheritable(sock.fileno(), True)
    daphne = str(Path(sys.executable).parent / "daphne")
    # exec: supervisord's pid is Daphne's own, so its signals reach Daphne.
    os.execv(daphne, [daphne, "--fd", str(sock.fileno()), *daphne_args])


if __name__ == "__main__":
    main()
