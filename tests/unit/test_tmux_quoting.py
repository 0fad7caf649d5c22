"""Hostile strings through quote() / quote_format() / valid_key(), checked against a real tmux.

The pure checks say what the encoding looks like; the round trips say what tmux's own
command parser makes of it, which is what matters: every string must arrive exactly as
given, as one argument, and never run anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from workers.tmux.driver import TmuxDriver
from workers.tmux.protocol import quote, quote_format, valid_key

HOSTILE = [
    "",
    "-t",
    "--",
    "-l x",
    "a;b",
    "a ; kill-server",
    "\\;",
    "a\\",
    '"',
    "'",
    "\"; kill-server; \"",
    "'; kill-server; '",
    "$HOME",
    "${HOME}",
    "$(touch /tmp/vterm-pwned)",
    "`touch /tmp/vterm-pwned`",
    "~",
    "~root/x",
    "#{pane_id}",
    "#(touch /tmp/vterm-pwned)",
    "##",
    "{",
    "}",
    "{ kill-server }",
    "%if 1",
    "%endif",
    "a\nkill-server",
    "a\r\nkill-server",
    "\x1b[31mred\x1b[0m",
    "\x1b]0;title\x07",
    "\x00",
    "\x7f\x01\x1f",
    "tab\there",
    "héllo ✓ 日本 😀",
    "\\033",
    "\\u0041",
    "x" * 5000,
]


# -- pure ----------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_quote_is_one_double_quoted_word_without_raw_specials(text):
    q = quote(text)
    assert q.startswith('"') and q.endswith('"')
    body = q[1:-1]
    # No unescaped quote, dollar or tilde, no raw control character or newline.
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            assert body[i + 1] in '"\\$~01234567', body
            i += 2 if body[i + 1] in '"\\$~' else 4
            continue
        assert ch not in '"$~' and ord(ch) >= 32 and ord(ch) != 127, (text, q)
        i += 1


def test_quote_format_doubles_hashes():
    assert quote_format("a#{b}#(c)") == '"a##{b}##(c)"'
    assert quote_format("/tmp/x") == quote("/tmp/x")


@pytest.mark.parametrize("key", ["C-c", "Enter", "Up", "F5", "F12", "M-x", "C-M-a", "S-Left", "a", "Z", "0",
                                 ";", "#", "~", "-", "'", '"', "\\", "BSpace", "Escape", "PageDown"])
def test_valid_key_accepts_key_names(key):
    assert valid_key(key)


@pytest.mark.parametrize("key", ["", "-t", "-l", "--", "C-c;kill-server", "Enter kill-server", "a b", "F13",
                                 "NotAKey", "C-", "C-C-C-C-c", "\n", "\x1b", "C-c\n", "#{pane_id}",
                                 "#(id)", "$(id)", '"x"', "é", "ab", "C-Enterx", "; kill-server"])
def test_valid_key_refuses_anything_else(key):
    assert not valid_key(key)


# -- against tmux ----------------------------------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def tmux_server(tmp_path):
    sock = str(tmp_path / "t.sock")
    subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-s", "t", "tail -f /dev/null"],
                   check=True, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    yield sock, tmp_path
    subprocess.run(["tmux", "-S", sock, "kill-server"], check=False, capture_output=True)


def _through_parser(sock: str, tmp_path, line: str) -> subprocess.CompletedProcess:
    """Run one line through tmux's command parser (as control mode does), not through a shell."""
    conf = tmp_path / "cmd.conf"
    conf.write_text(line + "\n")
    return subprocess.run(["tmux", "-S", sock, "source-file", str(conf)], check=False,
                          capture_output=True, text=True)


@needs_tmux
@pytest.mark.parametrize("text", [t for t in HOSTILE if t and "\x00" not in t])
def test_quote_round_trips_through_tmux(tmux_server, text):
    sock, tmp = tmux_server
    res = _through_parser(sock, tmp, f"set-buffer -b vt -- {quote(text)}")
    assert res.returncode == 0, res.stderr
    shown = subprocess.run(["tmux", "-S", sock, "show-buffer", "-b", "vt"], check=False, capture_output=True)
    assert shown.stdout.decode() == text
    # Nothing was run, and the server is still there.
    assert not os.path.exists("/tmp/vterm-pwned")
    assert subprocess.run(["tmux", "-S", sock, "has-session", "-t", "t"], check=False).returncode == 0


class _Quiet:
    def shell_output(self, name, data):
        pass

    def command_started(self, name, command_id, started_at):
        pass

    def command_finished(self, name, result):
        pass

    def shell_exited(self, name, reason):
        pass

    def server_lost(self):
        pass


@needs_tmux
def test_hostile_cwd_is_a_directory_not_a_format(tmp_path):
    """new-window -c expands formats: '#(cmd)' would run cmd in the tmux server."""
    marker = tmp_path / "pwned"
    hostile = tmp_path / f"d#(touch {marker})#{{pane_id}}$(id)~;x"
    # '/' cannot be in a file name: the marker path inside "#(...)" makes sub-directories.
    hostile.mkdir(parents=True)
    driver = TmuxDriver(str(tmp_path / "s" / "tmux.sock"), _Quiet(),
                        shell_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "xterm"},
                        source_user_bashrc=False)
    driver.start()
    try:
        info = driver.create_shell("x1", cwd=str(hostile), env={"V": "#{pane_id}#(touch /tmp/vterm-pwned)"},
                                   cols=80, rows=24)
        assert info.cwd == str(hostile)
        assert driver.current_cwd("x1") == str(hostile)
        driver.send_text("x1", 'printf "%s\\n" "$V" > v.txt\r')
        deadline = time.monotonic() + 10
        while not (hostile / "v.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (hostile / "v.txt").read_text() == "#{pane_id}#(touch /tmp/vterm-pwned)\n"
        assert not marker.exists() and not os.path.exists("/tmp/vterm-pwned")
    finally:
        driver.kill_server()
        driver.close()


@needs_tmux
@pytest.mark.parametrize("text", ["-t x -l ; kill-server", "-", "--", "-l", "-H 41", "\\; kill-server"])
def test_text_beginning_with_a_dash_is_typed_not_parsed_as_options(tmp_path, text):
    """Quotes do not stop tmux's option parser: send-keys needs "--" before the text."""
    driver = TmuxDriver(str(tmp_path / "s" / "tmux.sock"), _Quiet(),
                        shell_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "xterm"},
                        source_user_bashrc=False)
    driver.start()
    try:
        driver.create_shell("x2", cwd=str(tmp_path), env={}, cols=80, rows=24)
        out = tmp_path / "typed"
        driver.send_text("x2", f"stty raw -echo; head -c {len(text.encode())} > {out}; stty sane; touch {out}.done\r")
        time.sleep(0.3)
        driver.send_text("x2", text)
        deadline = time.monotonic() + 10
        while not (tmp_path / "typed.done").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert out.read_bytes() == text.encode()
        driver.send_keys("x2", ["-", "a"])  # a lone "-" key too
    finally:
        driver.kill_server()
        driver.close()
