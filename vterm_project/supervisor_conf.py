"""supervisord's configuration for `make run`: the stack's processes, restarted when they crash.

supervisord (http://supervisord.org/configuration.html) runs each process of
``StackConfig.processes()`` and restarts it when it exits: at once when it had been up for its
``startsecs``, else after a growing delay (1 s, 2 s, ...), at most ``START_RETRIES`` times in a
row; then it gives up on it ("gave up: <name> entered FATAL state") and leaves the others
running. Ctrl-C (SIGINT) or SIGTERM stops them all, the private Redis last (priorities).
"""

from __future__ import annotations

import os
import secrets
import shlex
from pathlib import Path

from .stack_config import ROOT, Proc, StackConfig, write_private

START_RETRIES = 5
STOP_WAIT = 20  # seconds between SIGTERM and SIGKILL (a backend detaches from tmux on SIGTERM)

# Every line a process writes goes to supervisord's stdout, prefixed with the process' name, as
# honcho did. supervisord cannot prefix by itself, so each program runs through this bash line:
# it sends its own stdout and stderr through `sed` (which writes to the pipe supervisord reads)
# and then exec's the program, so that supervisord's pid is the program's own (signals and
# `kill -9` reach it, not a wrapper). sed ignores SIGINT/SIGTERM, which supervisord sends to the
# whole process group on stop, so it writes the program's last lines and ends when the program
# has closed its output. Lines stay whole: sed writes each in one write(2).
PREFIX_SCRIPT = 'exec > >(trap "" INT TERM; exec sed -u "s/^/$0 | /") 2>&1; exec "$@"'

# Redis first, then the web node and the workers; stopped in the reverse order.
PRIORITY = {"redis": 10, "web": 100, "beat": 300, "scaler": 300, "flower": 400}
DEFAULT_PRIORITY = 200


def _escape(value: str) -> str:
    """supervisord expands %(name)s in commands and values: a literal % is written %%."""
    return value.replace("%", "%%")


def _program(p: Proc, width: int) -> str:
    label = p.name.ljust(width)
    command = " ".join(shlex.quote(a) for a in ["/bin/bash", "-c", PREFIX_SCRIPT, label, *p.argv])
    lines = [
        f"[program:{p.name}]",
        f"command={_escape(command)}",
        f"directory={ROOT}",
        f"priority={PRIORITY.get(p.name, PRIORITY.get(p.name.split('-')[0], DEFAULT_PRIORITY))}",  # web-2 as web
        "autostart=true",
        "autorestart=true",
        f"startsecs={p.startsecs}",
        f"startretries={START_RETRIES}",
        # The process' group: its own children (the scaler's backends, the prefixing sed) too.
        # tmux servers leave the group (they daemonize), so the shells live on.
        "stopasgroup=true",
        "killasgroup=true",
        "stopsignal=TERM",
        f"stopwaitsecs={STOP_WAIT}",
        "redirect_stderr=true",
        "stdout_logfile=/dev/stdout",
        "stdout_logfile_maxbytes=0",  # a pipe or terminal: no rotation
    ]
    if p.env:
        lines.append("environment=" + ",".join(f'{k}="{_escape(v)}"' for k, v in p.env.items()))
    return "\n".join(lines)


def supervisor_conf_path(cfg: StackConfig) -> Path:
    return cfg.data_dir / "supervisord.conf"


def supervisor_socket_path(cfg: StackConfig) -> Path:
    return cfg.data_dir / "supervisor.sock"


def write_supervisor_conf(cfg: StackConfig) -> Path:
    """Write the configuration (mode 0600: passwords are in it) and return its path.

    The environment common to every process (REDIS_URL, SECRET_KEY, ...) is not in it:
    supervisord passes on its own, which `make run` sets before it starts supervisord.
    """
    procs = cfg.processes()
    width = max(len(p.name) for p in procs)
    sock = supervisor_socket_path(cfg)
    password = secrets.token_urlsafe(16)  # new at every start: supervisorctl reads it from this file
    sections = [
        "; Written by vterm_project/devstack.py at every `make run`; edits are lost.",
        "[supervisord]",
        "nodaemon=true",
        # Its own lines go to stdout with the processes' (opened in append mode, as theirs are:
        # written through one shared offset, `make run > file` would overwrite lines).
        "silent=true",
        "logfile=/dev/stdout",
        "logfile_maxbytes=0",
        f"pidfile={cfg.data_dir / 'supervisord.pid'}",
        f"directory={ROOT}",
        *(["user=root"] if os.geteuid() == 0 else []),  # says so, rather than a warning at each start
        "",
        # `supervisorctl -c <this file> status|restart <name>|start <name>`: this user only.
        "[unix_http_server]",
        f"file={sock}",
        "chmod=0700",
        "username=vterm",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{sock}",
        "username=vterm",
        f"password={password}",
        "",
        "\n\n".join(_program(p, width) for p in procs),
        "",
    ]
    path = supervisor_conf_path(cfg)
    write_private(path, "\n".join(sections))
    return path
