"""A live shell's exported environment: bash's ``declare -px`` read back, and what of it is the user's.

The shell writes ``declare -px`` to a private file (the rc's ``__vterm_env``) followed by
``END_MARK``; a file without the mark was cut short and is not used. bash prints each
exported variable as one ``declare -FLAGS NAME[=VALUE]`` entry, the value a shell word:
``"..."`` (``\\`` escapes ``"``, ``\\``, ``$`` and `````), ``$'...'`` (ANSI-C escapes,
octal for bytes that are not printable in the shell's locale) or, for arrays, ``(...)``.
A value may span lines. Parsing is on bytes: escapes give bytes, and the value must then be
UTF-8 (what tmux and the database carry); a variable that is not is left out.
"""

from __future__ import annotations

END_MARK = b"# vterm-env-end"

# Set by bash itself, by tmux, or by the vterm rc at every start: never the user's to carry.
SHELL_OWNED = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "BASHOPTS", "SHELLOPTS", "BASH_ENV", "ENV", "COLUMNS", "LINES",
    "PROMPT_COMMAND", "PS0", "PS1", "PS2", "PS4", "IFS", "LD_PRELOAD", "TMUX", "TMUX_PANE",
    # The rc forces these after the environment is applied (pagers would swallow commands).
    "PAGER", "GIT_PAGER", "MANPAGER", "SYSTEMD_PAGER", "LESS",
})
SHELL_OWNED_PREFIXES = ("BASH_", "VTERM_", "__VTERM", "__vterm")
# Bounds on what is carried (the API's own for a session's env are 200 names, 32 KiB a value).
MAX_VALUE = 32 * 1024
MAX_TOTAL = 256 * 1024

# Flags of variables that cannot be carried as a plain NAME=value: arrays, namerefs, readonly.
_SKIP_FLAGS = set("aAnr")
_ANSI_C = {ord("a"): 7, ord("b"): 8, ord("e"): 27, ord("E"): 27, ord("f"): 12, ord("n"): 10, ord("r"): 13,
           ord("t"): 9, ord("v"): 11, ord("\\"): 92, ord("'"): 39, ord('"'): 34, ord("?"): 63}
_DQ_ESCAPED = b'"\\$`\n'
_HEX = b"0123456789abcdefABCDEF"


class EnvParseError(ValueError):
    pass


def parse_declare_px(data: bytes) -> dict[str, tuple[str, bytes | None]]:
    """``declare -px`` output (ending with END_MARK) → {name: (flags, value bytes or None)}.

    None: exported but never given a value (``export X``). Arrays are kept as their raw
    text (they are left out later). Raises EnvParseError on anything else.
    """
    end = data.rfind(END_MARK)
    if end < 0 or data[end + len(END_MARK):].strip():
        raise EnvParseError("the environment dump was cut short")
    buf = data[:end]
    out: dict[str, tuple[str, bytes | None]] = {}
    i, n = 0, len(buf)
    while True:
        while i < n and buf[i] in b" \t\n":
            i += 1
        if i >= n:
            return out
        if not buf.startswith(b"declare -", i):
            raise EnvParseError(f"unexpected text at byte {i}: {buf[i:i + 40]!r}")
        i += len(b"declare -")
        j = buf.find(b" ", i)
        if j < 0:
            raise EnvParseError("a declaration without a name")
        flags = buf[i:j].decode("ascii", "replace")
        i = j + 1
        j = i
        while j < n and (buf[j:j + 1].isalnum() or buf[j] == ord("_")):
            j += 1
        name = buf[i:j].decode("ascii")
        if not name or name[0].isdigit():
            raise EnvParseError(f"not a variable name at byte {i}")
        i = j
        if i >= n or buf[i] == ord("\n"):
            out[name] = (flags, None)
            continue
        if buf[i] != ord("="):
            raise EnvParseError(f"{name}: expected '=' at byte {i}")
        i += 1
        if i < n and buf[i] == ord("("):
            start = i
            i = _skip_array(buf, i + 1)
            out[name] = (flags, buf[start:i])
        else:
            value, i = _read_word(buf, i)
            out[name] = (flags, value)
        if i < n and buf[i] != ord("\n"):
            raise EnvParseError(f"{name}: unexpected text after the value at byte {i}")


def _read_word(buf: bytes, i: int, stops: bytes = b" \t\n") -> tuple[bytes, int]:
    """One shell word from ``buf[i:]`` (quoted and unquoted parts), decoded; and where it ends."""
    out = bytearray()
    n = len(buf)
    while i < n and buf[i] not in stops:
        c = buf[i]
        if c == ord('"'):
            i += 1
            while True:
                if i >= n:
                    raise EnvParseError("an unclosed double quote")
                c = buf[i]
                if c == ord('"'):
                    i += 1
                    break
                if c == ord("\\") and i + 1 < n and buf[i + 1] in _DQ_ESCAPED:
                    if buf[i + 1] != ord("\n"):  # backslash-newline is a line continuation
                        out.append(buf[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
        elif c == ord("$") and buf.startswith(b"$'", i):
            i = _read_ansi_c(buf, i + 2, out)
        elif c == ord("'"):
            j = buf.find(b"'", i + 1)
            if j < 0:
                raise EnvParseError("an unclosed single quote")
            out += buf[i + 1:j]
            i = j + 1
        elif c == ord("\\"):
            if i + 1 >= n:
                raise EnvParseError("a backslash at the end")
            if buf[i + 1] != ord("\n"):
                out.append(buf[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out), i


def _read_ansi_c(buf: bytes, i: int, out: bytearray) -> int:
    """The body of ``$'...'`` from ``i`` (after the opening quote) into ``out``; returns the end."""
    n = len(buf)
    while True:
        if i >= n:
            raise EnvParseError("an unclosed $'...'")
        c = buf[i]
        if c == ord("'"):
            return i + 1
        if c != ord("\\"):
            out.append(c)
            i += 1
            continue
        if i + 1 >= n:
            raise EnvParseError("a backslash at the end of $'...'")
        e = buf[i + 1]
        i += 2
        if e in _ANSI_C:
            out.append(_ANSI_C[e])
        elif ord("0") <= e <= ord("7"):
            digits = bytes([e])
            while len(digits) < 3 and i < n and ord("0") <= buf[i] <= ord("7"):
                digits += buf[i:i + 1]
                i += 1
            out.append(int(digits, 8) & 0xFF)
        elif e == ord("x"):
            digits = b""
            while len(digits) < 2 and i < n and buf[i:i + 1] in _HEX:
                digits += buf[i:i + 1]
                i += 1
            if not digits:
                out += b"\\x"
            else:
                out.append(int(digits, 16))
        elif e in (ord("u"), ord("U")):
            width = 4 if e == ord("u") else 8
            digits = b""
            while len(digits) < width and i < n and buf[i:i + 1] in _HEX:
                digits += buf[i:i + 1]
                i += 1
            try:
                out += chr(int(digits, 16)).encode("utf-8", "surrogatepass")
            except ValueError:  # no digits, or beyond Unicode: kept as written
                out += b"\\" + bytes([e]) + digits
        elif e == ord("c") and i < n:
            out.append(buf[i] & 0x1F)
            i += 1
        else:
            out += b"\\" + bytes([e])  # bash keeps an unknown escape as it is


def _skip_array(buf: bytes, i: int) -> int:
    """Past the ``)`` closing an array value that opened before ``i``."""
    n = len(buf)
    while True:
        while i < n and buf[i] in b" \t\n":
            i += 1
        if i >= n:
            raise EnvParseError("an unclosed array")
        if buf[i] == ord(")"):
            return i + 1
        _, i = _read_word(buf, i, stops=b" \t\n)")


def user_env(declared: dict[str, tuple[str, bytes | None]], base: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What of a shell's exported variables is the session's own: ``(env, left_out)``.

    Left out: what the shell, tmux or the vterm rc set themselves (SHELL_OWNED), readonly
    variables, arrays and namerefs, names exported without a value, values that are not
    UTF-8 or too large, and the service's base environment (``base``) where it is unchanged.
    ``left_out`` names what was dropped for size or encoding (the rest is dropped by design).
    """
    env: dict[str, str] = {}
    dropped: list[str] = []
    total = 0
    for name in sorted(declared):
        flags, raw = declared[name]
        if raw is None or _SKIP_FLAGS & set(flags) or name in SHELL_OWNED or name.startswith(SHELL_OWNED_PREFIXES):
            continue
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            dropped.append(name)
            continue
        if base.get(name) == value:
            continue
        if len(raw) > MAX_VALUE or total + len(raw) + len(name) > MAX_TOTAL:
            dropped.append(name)
            continue
        total += len(raw) + len(name)
        env[name] = value
    return env, dropped
