"""Pure logic of the client and CLI: error mapping, URLs, frame bookkeeping, config precedence, exit codes.
(The behaviour against a live server is in tests/integration/test_client.py and test_cli.py.)"""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from vterm import config
from vterm.cli import _exit_code_of, build_parser
from vterm.errors import (
    AuthError,
    BadRequest,
    NotFound,
    RateLimited,
    Unavailable,
    VtermError,
    error_for_response,
)
from vterm.stream import Terminal, ws_url
from vterm.types import CommandResult, Frame


def test_errors_carry_message_status_and_fields():
    e = error_for_response(400, {"cwd": ["Must be an absolute path."], "env": {"A-B": ["bad name"]}}, {})
    assert isinstance(e, BadRequest) and e.status == 400
    assert e.errors == {"cwd": ["Must be an absolute path."], "env": ["A-B: ['bad name']"]}
    assert "cwd: Must be an absolute path." in e.message
    assert isinstance(error_for_response(401, {"detail": "Invalid token."}, {}), AuthError)
    nf = error_for_response(404, {"detail": "No such session."}, {})
    assert isinstance(nf, NotFound) and str(nf) == "No such session. (HTTP 404)"
    rl = error_for_response(429, {"detail": "slow down"}, httpx.Headers({"Retry-After": "7"}))
    assert isinstance(rl, RateLimited) and rl.retry_after == 7.0
    un = error_for_response(503, "<html>gateway</html>", httpx.Headers({}))
    assert isinstance(un, Unavailable) and un.retry_after is None and "gateway" in un.message
    other = error_for_response(418, None, {}, "I'm a teapot")
    assert type(other) is VtermError and other.message == "I'm a teapot"


def test_ws_url():
    assert ws_url("http://h:8000", "abc") == "ws://h:8000/ws/v1/sessions/abc/"
    assert ws_url("https://h/prefix/", "abc", since=5) == "wss://h/prefix/ws/v1/sessions/abc/?since=5"


def _feed(term: Terminal, frame: dict) -> Frame | None:
    return term._accept(json.dumps(frame))


def test_terminal_tracks_seq_drops_repeats_and_acks_by_volume():
    term = Terminal("ws://x/ws/v1/sessions/s/", "t")
    _feed(term, {"type": "hello", "seq": 10, "session": None, "flow": {"high": 400, "low": 100}})
    assert term.last_seq == 10 and term._ack_every == 100
    assert _feed(term, {"type": "output", "seq": 11, "data": "a" * 60}).seq == 11
    assert term._ack_due() is None
    assert _feed(term, {"type": "output", "seq": 11, "data": "dup"}) is None, "a resume overlap is dropped"
    _feed(term, {"type": "output", "seq": 12, "data": "b" * 60})
    assert term._ack_due() == 12 and term._ack_due() is None
    _feed(term, {"type": "snapshot", "seq": 20, "lines": ["x"]})
    assert term.last_seq == 20
    # A reconnect's hello does not move the resume point back to the server's newest seq.
    _feed(term, {"type": "hello", "seq": 25})
    assert term.last_seq == 20


def test_command_result_ok_and_done():
    base = {"id": "c", "session": "s", "seq": 1, "command": "x", "output": "", "cwd": "/"}
    assert CommandResult.from_json({**base, "status": "succeeded", "exit_code": 0}).ok
    failed = CommandResult.from_json({**base, "status": "failed", "exit_code": 3})
    assert failed.done and not failed.ok
    assert not CommandResult.from_json({**base, "status": "running", "exit_code": None}).done


@pytest.mark.parametrize(("status", "code", "expected"), [
    ("succeeded", 0, 0), ("failed", 3, 3), ("failed", None, 1), ("failed", 300, 1),
    ("timed_out", 130, 124), ("interrupted", None, 130),
])
def test_run_exit_codes(status, code, expected):
    r = CommandResult.from_json({"id": "c", "status": status, "exit_code": code})
    assert _exit_code_of(r) == expected


def test_config_precedence_and_file_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("VTERM_CONFIG", str(tmp_path / "sub" / "config.json"))
    monkeypatch.delenv("VTERM_URL", raising=False)
    monkeypatch.delenv("VTERM_TOKEN", raising=False)
    assert config.resolve(None, None).url == config.DEFAULT_URL
    path = config.save("http://saved:1", "saved-token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    s = config.resolve(None, None)
    assert (s.url, s.token) == ("http://saved:1", "saved-token")
    monkeypatch.setenv("VTERM_TOKEN", "env-token")
    assert config.resolve(None, None).token_source == "VTERM_TOKEN"
    s = config.resolve("http://flag:2/", "flag-token")
    assert (s.url, s.token, s.url_source) == ("http://flag:2", "flag-token", "--url")


def test_run_argv_keeps_the_commands_own_options():
    args = build_parser().parse_args(["run", "--timeout", "3", "box", "--", "ls", "-la", "--json"])
    assert (args.session, args.timeout, args.command) == ("box", 3.0, ["ls", "-la", "--json"])
