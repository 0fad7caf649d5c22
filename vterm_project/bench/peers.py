"""vterm beside its peers, on the same machine in the same run (``manage.py vterm_bench --peers``):

- the command figure against SWE-ReX (peer_swerex.py): `true` in a persistent session, p50/p99;
- keystroke echo and output rate against terminado (peer_terminado.py), over each one's WebSocket.

Each figure is measured by the same code on both sides (terminal_figures.py). A peer that cannot be
run (its package missing, its server failing) is reported as such; the other figures still are.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from . import terminal_figures as tf
from .report import summary

log = logging.getLogger(__name__)

VTERM_FILE = "$HOME/.vterm-bench-cat.txt"  # in the session's own home (a sandboxed shell sees no other)


@dataclass
class PeerConfig:
    calls: int = 200  # `true` commands, each side
    keys: int = 200  # keystrokes, each side
    mb: float = 55.0  # size of the file `cat` writes out


def compare(url: str, token: str, cfg: PeerConfig, say: Callable[[str], None] = print) -> dict:
    """Every figure for vterm (the stack at ``url``) and for its peers: {figure: {side: figures}}."""
    from vterm_project.devstack import free_port

    out: dict = {"command": {}, "echo": {}, "output": {}, "errors": {}}
    tmp = tempfile.mkdtemp(prefix="vterm-peers-")
    try:
        say("peers: vterm…")
        _side(out, "vterm", lambda: _vterm(url, token, cfg, out))
        say("peers: terminado…")
        _side(out, "terminado", lambda: _terminado(free_port(), tmp, cfg, out))
        say("peers: SWE-ReX…")
        _side(out, "swe-rex", lambda: _swerex(free_port(), tmp, cfg, out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _side(out: dict, name: str, run: Callable[[], None]) -> None:
    try:
        run()
    except ImportError as exc:
        out["errors"][name] = f"not installed ({exc.name}): pip install -e '.[bench]'"
    except Exception as exc:  # a peer that fails must not take the other figures with it
        log.exception("peer %s failed", name)
        out["errors"][name] = f"{type(exc).__name__}: {exc}"


def _vterm(url: str, token: str, cfg: PeerConfig, out: dict) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        r = http.post("/api/v1/sessions/", json={"name": "bench-peers", "cols": 120, "rows": 40})
        r.raise_for_status()
        sid = r.json()["id"]
        try:
            out["command"]["vterm"] = summary(tf.vterm_command_latency(url, token, sid, cfg.calls))
            term = tf.VtermTerminal(url, token, sid)
            try:
                _terminal_figures(term, VTERM_FILE, cfg, out, "vterm")
                tf.run_line(term, f"rm -f {VTERM_FILE}")
            finally:
                term.close()
        finally:
            http.delete(f"/api/v1/sessions/{sid}/")


def _terminado(port: int, tmp: str, cfg: PeerConfig, out: dict) -> None:
    from .peer_terminado import TerminadoServer

    with TerminadoServer(port, tmp) as server:
        term = server.terminal()
        try:
            _terminal_figures(term, f"{tmp}/cat.txt", cfg, out, "terminado")
        finally:
            term.close()


def _terminal_figures(term, path: str, cfg: PeerConfig, out: dict, side: str) -> None:
    tf.run_line(term, tf.make_file_command(path, cfg.mb), timeout=300)
    out["echo"][side] = summary(tf.keystroke_echo(term, cfg.keys))
    out["output"][side] = tf.output_rate(term, path)


def _swerex(port: int, tmp: str, cfg: PeerConfig, out: dict) -> None:
    from .peer_swerex import SweRexServer, command_latency

    with SweRexServer(port, tmp) as server:
        out["command"]["swe-rex"] = summary(command_latency(server, cfg.calls))
