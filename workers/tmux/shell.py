"""Shell integration: the bash rc that emits completion marks, and their parser.

The shell prints, carrying a per-session nonce so that output cannot forge them:

- ``ESC ] 133 ; C ; nonce BEL``          (PS0) a command line was read and starts now
- ``ESC ] 133 ; P ; nonce BEL``          (PS2) the shell wants more input: the line was incomplete
- ``ESC ] 133 ; D ; ec ; nonce ; cwd BEL`` (PROMPT_COMMAND) the command ended with ``ec``
- ``ESC ] 133 ; X ; ec ; nonce BEL``     (EXIT trap) the shell itself is exiting

and, at the end of PS1, ``ESC ] 133 ; B BEL``: where the prompt ends and the typed command
starts. It carries no nonce and means nothing to vterm: it is output, for terminals (the
page's command list reads the command line from there).

and readline's ``ESC [ ? 2004 h`` (bracketed paste on) says the prompt is reading
input with the terminal in raw mode: typing earlier would make the kernel echo the
keys itself. The parser reports it as mark ``R`` and keeps its bytes as output; likewise
``ESC [ ? 2004 l`` (bracketed paste off: readline stopped reading) as mark ``L``.

The cwd is percent-encoded by the shell, bytes as they are on disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

NONCE_ENV = "__VTERM_NONCE"
# A key the rc binds to readline's kill-whole-line in every keymap (no terminal sends it).
CLEAR_LINE = "\x1b[5099~"
HISTORY_ENV = "__VTERM_HISTORY"

BASHRC = r"""# vterm shell integration: generated, do not edit.
__vterm_nonce=$__VTERM_NONCE
# A session that moved here: its past commands, NUL-separated, loaded at the first prompt
# (after bash has read HISTFILE, so that they are the newest).
__vterm_history=${__VTERM_HISTORY:-}
unset __VTERM_NONCE __VTERM_HISTORY TMUX TMUX_PANE
if [ -n "$VTERM_SOURCE_BASHRC" ] && [ -r ~/.bashrc ]; then . ~/.bashrc; fi
unset VTERM_SOURCE_BASHRC
# Pagers would swallow the next command typed into the session.
export PAGER=cat GIT_PAGER=cat MANPAGER=cat SYSTEMD_PAGER= LESS=-FRX
bind 'set enable-bracketed-paste on' 2>/dev/null
# Typed before each command: what a person left on the line goes to the kill ring, in any mode (and vi's
# command mode goes back to inserting, for the paste that follows).
bind -m emacs '"\e[5099~": kill-whole-line' 2>/dev/null
bind -m vi-insert '"\e[5099~": kill-whole-line' 2>/dev/null
bind -m vi-command '"\e[5098~": kill-whole-line' 2>/dev/null
bind -m vi-command '"\e[5099~": "\e[5098~i"' 2>/dev/null
# A Ctrl-S typed at the terminal (XOFF) would hold all the shell prints, its marks too, until a Ctrl-Q:
# every command would wait for it. Readline's C-s (forward search) is what it does then.
stty -ixon 2>/dev/null
__vterm_user_prompt_command=${PROMPT_COMMAND:-}
__vterm_prompt() {
  local __vterm_ec=$? __vterm_p=$PWD
  if [ -n "$__vterm_history" ]; then
    local __vterm_l
    { while IFS= read -r -d '' __vterm_l; do history -s -- "$__vterm_l"; done < "$__vterm_history"; } 2>/dev/null
    __vterm_history=
  fi
  if [[ $__vterm_p == *[!A-Za-z0-9/._~+,@=-]* ]]; then
    local LC_ALL=C __vterm_i __vterm_c __vterm_o=
    for ((__vterm_i = 0; __vterm_i < ${#__vterm_p}; __vterm_i++)); do
      __vterm_c=${__vterm_p:__vterm_i:1}
      case $__vterm_c in
        [A-Za-z0-9/._~+,@=-]) __vterm_o+=$__vterm_c ;;
        *) printf -v __vterm_c '%%%02X' "'$__vterm_c"; __vterm_o+=$__vterm_c ;;
      esac
    done
    __vterm_p=$__vterm_o
  fi
  printf '\033]133;D;%s;%s;%s\007' "$__vterm_ec" "$__vterm_nonce" "$__vterm_p"
  if [ -n "$__vterm_user_prompt_command" ]; then eval "$__vterm_user_prompt_command"; fi
  # The prompt's end (133;B), for terminals that show which command ran: kept at the end of
  # PS1 whatever the user (or their prompt command) sets it to (a readonly PS1 is left alone, quietly).
  [[ $PS1 == *$'\e]133;B\a'* ]] || { PS1+=$'\[\e]133;B\a\]'; } 2>/dev/null
}
# The exported environment, for a session moving away (workers/tmux/shellenv.py). Typed by the
# driver with the last status as $1, which it keeps; it takes itself out of the history.
__vterm_env() {
  { builtin declare -px; builtin printf '\n# vterm-env-end\n'; } >| "$2"
  [[ $(builtin history 1) == *'__vterm_env '* ]] && builtin history -d -1
  return "$1"
}
trap 'printf "\033]133;X;%s;%s\007" "$?" "$__vterm_nonce"' EXIT
PROMPT_COMMAND=__vterm_prompt
PS0=$'\e]133;C;'"$__vterm_nonce"$'\a'
PS2=$'\e]133;P;'"$__vterm_nonce"$'\a> '
# Completion detection depends on these: changing them is refused, visibly, by bash.
readonly PS0 PS2 PROMPT_COMMAND __vterm_nonce __vterm_user_prompt_command
readonly -f __vterm_prompt __vterm_env
"""

_MARK_START = b"\x1b]133;"
# Readline reads (bracketed paste on): mark R, whose bytes stay in the output.
READING = b"\x1b[?2004h"
# readline's bracketed paste on (it reads) or off (it stopped): marks R and L.
_READLINE = re.compile(rb"\x1b\[\?2004([hl])")
_MARK_RE = re.compile(rb"\x1b\]133;([CPDX]);([^\x07\x1b]*)\x07")
# Longest mark we ever wait for before giving up on it being one (cwd may be long).
_MAX_MARK = 16384


@dataclass(frozen=True)
class Mark:
    kind: str  # "C", "P", "D", "X", "R" (readline reading input) or "L" (readline stopped reading)
    exit_code: int | None = None
    cwd: str | None = None


@dataclass(frozen=True)
class Piece:
    """What the parser found in a chunk: plain bytes, or a mark (and where it stood)."""

    data: bytes = b""
    mark: Mark | None = None


class MarkParser:
    """Splits a pane's byte stream into output and marks that carry our nonce.

    Marks with another nonce are left in the output as the bytes they are.
    A mark split across chunks is held back until it is complete.
    """

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce.encode()
        self._pending = b""

    def feed(self, data: bytes) -> list[Piece]:
        if not self._pending and b"\x1b" not in data:
            # Every mark begins with ESC: plain text (a `cat` of a text file) is one scan, not three.
            return [Piece(data=data)] if data else []
        buf = self._pending + data
        self._pending = b""
        pieces: list[Piece] = []
        pos = 0
        while True:
            start = buf.find(_MARK_START, pos)
            rl = _READLINE.search(buf, pos, start if start >= 0 else len(buf))
            if rl is not None:
                pieces.append(Piece(data=buf[pos : rl.end()], mark=Mark("R" if rl.group(1) == b"h" else "L")))
                pos = rl.end()
                continue
            if start < 0:
                # An ESC (or "ESC ]13") at the very end may begin a mark: hold it.
                tail = _partial_prefix_len(buf, pos)
                if len(buf) - tail > pos:
                    pieces.append(Piece(data=buf[pos : len(buf) - tail]))
                self._pending = buf[len(buf) - tail :]
                return pieces
            m = _MARK_RE.match(buf, start)
            if m is None:
                end = buf.find(b"\x07", start)
                if end < 0 and len(buf) - start < _MAX_MARK and buf.find(b"\x1b", start + 1) < 0:
                    if start > pos:
                        pieces.append(Piece(data=buf[pos:start]))
                    self._pending = buf[start:]
                    return pieces
                # Not a mark of ours: pass the bytes through.
                nxt = start + len(_MARK_START)
                pieces.append(Piece(data=buf[pos:nxt]))
                pos = nxt
                continue
            mark = self._parse(m.group(1), m.group(2))
            if mark is None:
                pieces.append(Piece(data=buf[pos : m.end()]))
            else:
                if start > pos:
                    pieces.append(Piece(data=buf[pos:start]))
                pieces.append(Piece(mark=mark))
            pos = m.end()

    def _parse(self, kind: bytes, body: bytes) -> Mark | None:
        parts = body.split(b";")
        k = kind.decode()
        try:
            if k in ("C", "P"):
                return Mark(k) if parts == [self.nonce] else None
            if k == "X":
                if len(parts) == 2 and parts[1] == self.nonce:
                    return Mark(k, exit_code=int(parts[0]))
                return None
            if len(parts) >= 3 and parts[1] == self.nonce:
                cwd = unquote_to_bytes(b";".join(parts[2:])).decode("utf-8", "surrogateescape")
                return Mark(k, exit_code=int(parts[0]), cwd=cwd)
        except ValueError:
            return None
        return None


def _partial_prefix_len(buf: bytes, pos: int) -> int:
    """Length of the longest suffix of buf[pos:] that is a proper prefix of a mark start."""
    for n in range(min(max(len(_MARK_START), len(READING)) - 1, len(buf) - pos), 0, -1):
        if buf.endswith(_MARK_START[:n]) or buf.endswith(READING[:n]):
            return n
    return 0


_ANSI_RE = re.compile(
    r"""
    \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)      # OSC ... BEL or ST
    | \x1b[P^_X][^\x1b]*\x1b\\             # DCS, PM, APC, SOS ... ST
    | \x1b\[[0-?]*[ -/]*[@-~]              # CSI
    | \x1b[ -/]*[0-~]                      # two-byte and charset escapes
    | \x9b[0-?]*[ -/]*[@-~]                # 8-bit CSI
    """,
    re.VERBOSE,
)


# What the terminal shows of a stop vterm made (a Ctrl-C, then a kill if it was ignored): the
# Ctrl-C's echo and the newline bash then prints, bash's "Killed".
_STOP_TRACES = re.compile(rb"(?m:\^C|^)(?:\r?\n)?Killed\r?\n|\^C(?:\r?\n)?")


def clean_output(raw: bytes, stopped_at: int | None = None) -> str:
    """What the API calls a command's output: text, CRLF as LF, escapes removed. ``stopped_at``:
    where the output was when vterm stopped the command; the stop's traces after it are not the
    command's output (the raw bytes keep them)."""
    if stopped_at is not None:
        raw = raw[:stopped_at] + _STOP_TRACES.sub(b"", raw[stopped_at:])
    text = raw.decode("utf-8", "replace")
    text = _ANSI_RE.sub("", text)
    return text.replace("\r\n", "\n")
