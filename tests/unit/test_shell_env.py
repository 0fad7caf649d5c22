"""A live shell's environment read back (workers/tmux/shellenv.py, TmuxDriver.capture_env) and a moved
session's history seeded into a new shell.

The parser is checked against what a real bash prints for hostile values, in UTF-8 and C
locales; the driver against a real tmux and bash.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time

import pytest

from tests.driver_recorder import DriverRecorder
from workers.tmux.driver import TmuxDriver
from workers.tmux.shellenv import END_MARK, EnvParseError, parse_declare_px, user_env

HOSTILE = {
    "FOO": 'a b"c',
    "NL": "line1\nline2\n",
    "UNI": "héllo ✓ 日本 😀 $x `y` \\z",
    "EQ": "a=b=c",
    "EMPTY": "",
    "CTRL": "a\tb\x01c\x1b[31m\x7f",
    "QUOTES": "it's \"q\" \\ $HOME ${HOME} $(id)",
    "CR": "a\rb",
    "BACKSLASH": "\\",
    "TRAILING": "x\\",
    "C1": "\u0085\u00a0\u2028",
    "ANSI": "$'x'",
    "PAREN": "(a b)",
    "BSNL": "\\\n",
    "DECL": "\ndeclare -x EVIL=1\n",
    "MARK": "# vterm-env-end",
}


def _random_values(n: int, seed: int = 7) -> dict[str, str]:
    rng = random.Random(seed)

    def char() -> str:
        return chr(rng.choice([rng.randrange(1, 128), rng.randrange(128, 0x800), rng.randrange(0x800, 0xD7FF),
                               rng.randrange(0x10000, 0x110000)]))
    return {f"R{i}": "".join(char() for _ in range(rng.randrange(0, 40))) for i in range(n)}


def _bash_dump(env: dict[str, str], script: str = "") -> bytes:
    return subprocess.run(["bash", "--norc", "--noprofile", "-c", f"{script}\ndeclare -px; printf '\\n# vterm-env-end\\n'"],
                          env=env, capture_output=True, check=True).stdout


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_parser_reads_back_what_bash_printed(locale):
    values = {**HOSTILE, **_random_values(300)}
    got = parse_declare_px(_bash_dump({"PATH": os.environ["PATH"], "LC_ALL": locale, **values}))
    for name, value in values.items():
        assert got[name][1] is not None and got[name][1].decode("utf-8") == value, name
    assert "EVIL" not in got


def test_parser_keeps_flags_and_skips_arrays():
    script = ("declare -rx RO=1; declare -ix INT=5; declare -ax ARR=('a b' \"c)\" $'d\\n' '[x]=)'); "
              "declare -Ax AS=([\"k )\"]=v [x]=$'\\''); export NOVAL; export AFTER=ok")
    got = parse_declare_px(_bash_dump({"PATH": os.environ["PATH"]}, script))
    assert got["RO"] == ("rx", b"1") and got["INT"] == ("ix", b"5") and got["NOVAL"] == ("x", None)
    assert got["ARR"][0] == "ax" and got["AS"][0] == "Ax"
    assert got["AFTER"] == ("x", b"ok")


def test_parser_refuses_a_cut_dump():
    whole = b'declare -x A="1"\ndeclare -x B="2"\n' + END_MARK + b"\n"
    assert parse_declare_px(whole) == {"A": ("x", b"1"), "B": ("x", b"2")}
    for cut in (b'declare -x A="1"\ndeclare -x B="2', b'declare -x A="1"\n', b""):
        with pytest.raises(EnvParseError):
            parse_declare_px(cut)
    with pytest.raises(EnvParseError):
        parse_declare_px(b'declare -x A="unclosed\n' + END_MARK + b"\n")
    with pytest.raises(EnvParseError):
        parse_declare_px(b"garbage\n" + END_MARK)


def test_ansi_c_escapes():
    dump = (b"declare -x A=$'\\a\\b\\E\\f\\n\\r\\t\\v\\\\\\'\\\"\\?\\101\\x41\\u00e9\\U0001F600\\cA\\q'\n"
            + END_MARK)
    assert parse_declare_px(dump)["A"][1] == b"\a\b\x1b\f\n\r\t\v\\'\"?AA" + "é😀".encode() + b"\x01\\q"


def test_user_env_leaves_out_what_the_shell_and_the_service_own():
    declared = {
        "FOO": ("x", b"bar"), "PWD": ("x", b"/tmp"), "OLDPWD": ("x", None), "SHLVL": ("x", b"1"),
        "BASH_FUNC_x%%": ("x", b"() { :; }"), "BASHOPTS": ("rx", b"x"), "RO": ("rx", b"1"),
        "ARR": ("ax", b"([0]=\"a\")"), "PAGER": ("x", b"cat"), "VTERM_SOURCE_BASHRC": ("x", b"1"),
        "__VTERM_NONCE": ("x", b"n"), "PATH": ("x", b"/usr/bin"), "LANG": ("x", b"fr_FR.UTF-8"),
        "HOME": ("x", b"/root"), "BAD": ("x", b"\xff\xfe"), "BIG": ("x", b"x" * 40000), "INT": ("ix", b"5"),
    }
    env, dropped = user_env(declared, {"PATH": "/usr/bin", "LANG": "C.UTF-8", "HOME": "/root"})
    # PATH and HOME unchanged from the base environment; LANG changed by the user.
    assert env == {"FOO": "bar", "LANG": "fr_FR.UTF-8", "INT": "5"}
    assert sorted(dropped) == ["BAD", "BIG"]


# -- against tmux and bash --------------------------------------------------------------

needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.fixture
def driver(tmp_path):
    rec = DriverRecorder()
    d = TmuxDriver(str(tmp_path / "s" / "tmux.sock"), rec,
                   shell_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "xterm-256color",
                              "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
                   source_user_bashrc=False)
    d.start()
    d.rec = rec
    try:
        yield d
    finally:
        d.kill_server()
        d.close()


def _ansi_c(value: str) -> str:
    """A bash $'...' word for ``value`` with no control character typed as itself."""
    return "$'" + "".join(f"\\{ord(c):03o}" if ord(c) < 32 or c in "'\\\x7f" else c for c in value) + "'"


def _run(d: TmuxDriver, name: str, cid: str, text: str):
    d.run(name, cid, text, timeout=10)
    return d.rec.wait(cid)


@needs_tmux
def test_capture_env_reads_what_was_exported_and_leaves_no_trace(driver, tmp_path):
    driver.create_shell("s1", cwd=str(tmp_path), env={"GIVEN": "at creation", "GONE": "x"}, cols=80, rows=24)
    for i, (name, value) in enumerate(HOSTILE.items()):
        assert _run(driver, "s1", f"e{i}", f"export {name}={_ansi_c(value)}").status == "succeeded"
    assert _run(driver, "s1", "u", "unset GONE; export PATH=\"/opt/x:$PATH\"; declare -rx RO=1; false").exit_code == 1
    before = bytes(driver.rec.output["s1"])
    files_before = set(os.listdir(tmp_path / "s"))

    env = driver.capture_env(["s1", "no-such-shell"])
    assert env["no-such-shell"] is None
    got = env["s1"]
    assert {k: got.get(k) for k in HOSTILE} == HOSTILE
    assert got["GIVEN"] == "at creation" and "GONE" not in got and "RO" not in got
    assert got["PATH"] == f"/opt/x:{os.environ['PATH']}"
    for owned in ("PWD", "OLDPWD", "SHLVL", "HOME", "TERM", "LANG", "PAGER", "LESS"):
        assert owned not in got, owned

    # Nothing of it reached the listener: no command events, no output (its echo, marks, prompt).
    time.sleep(0.3)
    assert driver.rec.started == [f"e{i}" for i in range(len(HOSTILE))] + ["u"]
    # (tmux may pass on the prompt drawn after it in a chunk of its own, with the mark that ends
    # every prompt: those may show.)
    extra = bytes(driver.rec.output["s1"])[len(before):].replace(b"\x1b]133;B\x07", b"")
    assert b"__vterm_env" not in extra and b"\x1b]133" not in extra and b"\n" not in extra, extra
    assert set(os.listdir(tmp_path / "s")) == files_before, "the dump file was removed"
    # $? is kept, the history has no trace of it, and the next command runs as usual.
    after = _run(driver, "s1", "after", 'echo "ec=$?"; history 2 | head -n 1 | grep -c "unset GONE"; echo "$FOO"')
    assert after.raw.replace(b"\r\n", b"\n").endswith(b'ec=1\n1\na b"c\n'), after.raw
    assert driver.shell_info("s1").last_command == "after"


@needs_tmux
def test_capture_env_skips_a_busy_shell_and_waits_for_one_getting_ready(driver, tmp_path):
    driver.create_shell("busy", cwd=str(tmp_path), env={}, cols=80, rows=24)
    driver.run("busy", "sleep", "sleep 30", timeout=None)
    deadline = time.monotonic() + 5
    while driver.rec.started != ["sleep"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert driver.capture_env(["busy"], timeout=1) == {"busy": None}
    driver.interrupt("busy", "sleep")
    driver.rec.wait("sleep")
    assert _run(driver, "busy", "next", "echo next").raw.replace(b"\r\n", b"\n").endswith(b"next\n")


@needs_tmux
def test_new_shell_starts_with_the_given_history(driver, tmp_path):
    history = ["echo one", "for i in 1 2; do\n  echo $i\ndone", "-x looks like an option", "echo 'last \"one\"'"]
    driver.create_shell("h1", cwd=str(tmp_path), env={}, cols=80, rows=24, history=history)
    assert not [f for f in os.listdir(tmp_path / "s") if f.startswith("hist-")], "the history file was removed"
    out = _run(driver, "h1", "h", "history").raw.decode().replace("\r\n", "\n")
    # "history" numbers each entry: 1..4 are the given ones (the multi-line one whole), 5 itself.
    expected = "".join(f"{i + 1:5d}  {c}\n" for i, c in enumerate([*history, "history"]))
    assert out == expected, out
    # Up-arrow gives the newest of them back in the terminal.
    driver.send_keys("h1", ["C-u", "Up", "Up"])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and 'last "one"' not in "\n".join(driver.screen("h1").lines):
        time.sleep(0.05)
    assert "echo 'last \"one\"'" in "\n".join(driver.screen("h1").lines)
