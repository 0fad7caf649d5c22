"""Whose fault a session start was: the request's (a 400 naming what, never charged to the
backend's circuit breaker) or the backend's own (charged: sessions/circuit.py).

A shell that exits as it starts, or never shows its prompt, with an environment or a
directory its creator chose, failed because of them: one user asking for
``{"PATH": "/nonexistent"}`` must not make the pool stop placing everyone's sessions on
this backend (issue 14). Without a chosen environment or directory the same failure is
the backend's. Anything else (tmux gone, a tmux command that failed, a sandbox that could
not be made) is the backend's too. A start that times out because the backend is overloaded,
with a chosen environment, is taken for the request's: a 400 the client may retry, and a
breaker that stays closed, rather than a breaker that any one user can open.
"""

from __future__ import annotations

import shutil

from .tmux.driver import ShellDidNotStart, ShellError


def start_failure_reply(exc: Exception, *, cwd: str, env: dict) -> dict:
    """The reply for a start that raised ``exc``: ``field`` says the request was at fault."""
    text = str(exc)
    if isinstance(exc, ShellError) and text.startswith("cwd:"):
        return {"ok": False, "field": "cwd", "error": text.removeprefix("cwd: ")}
    if isinstance(exc, ShellDidNotStart) and (env or cwd):
        field = "env" if env else "cwd"
        return {"ok": False, "field": field, "error": f"{text}, with the {_asked(env, cwd)} asked for{_hint(env)}."}
    return {"ok": False, "field": "", "error": f"{exc.__class__.__name__}: {text}"}


def _asked(env: dict, cwd: str) -> str:
    if env and cwd:
        return "environment and directory"
    return "environment" if env else "directory"


def _hint(env: dict) -> str:
    """The likeliest culprit, named: a PATH on which bash is not found."""
    path = env.get("PATH")
    if path is not None and shutil.which("bash", path=path) is None:
        return f"; PATH={path!r} has no bash"
    return ""
