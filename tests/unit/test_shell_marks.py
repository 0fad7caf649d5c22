"""Pure logic of the shell integration: mark parsing, control-mode decoding, output cleaning."""

from __future__ import annotations

from workers.tmux.protocol import decode_output
from workers.tmux.shell import Mark, MarkParser, clean_output

NONCE = "n0nce"


def feed_all(parser: MarkParser, chunks: list[bytes]) -> tuple[bytes, list[Mark]]:
    data, marks = b"", []
    for chunk in chunks:
        for piece in parser.feed(chunk):
            data += piece.data
            if piece.mark:
                marks.append(piece.mark)
    return data, marks


def test_marks_are_recognised_and_removed():
    stream = (b"\x1b]133;C;n0nce\x07hello\r\n"
              b"\x1b]133;D;3;n0nce;/tmp/a%20b\x07\x1b[?2004hprompt$ ")
    data, marks = feed_all(MarkParser(NONCE), [stream])
    assert [m.kind for m in marks] == ["C", "D", "R"]
    assert marks[1] == Mark("D", exit_code=3, cwd="/tmp/a b")
    assert data == b"hello\r\n\x1b[?2004hprompt$ "


def test_marks_split_across_chunks_at_every_byte():
    stream = b"out\x1b]133;D;0;n0nce;/x\x07more\x1b[?2004h"
    for cut in range(1, len(stream)):
        data, marks = feed_all(MarkParser(NONCE), [stream[:cut], stream[cut:]])
        assert [m.kind for m in marks] == ["D", "R"], cut
        assert data == b"outmore\x1b[?2004h", cut


def test_readline_starting_and_stopping_to_read_are_marks_kept_as_output():
    stream = b"ls\r\n\x1b[?2004l\rbash: !x: event not found\r\n\x1b[?2004h$ \x1b[?2004"
    for cut in range(1, len(stream)):
        data, marks = feed_all(MarkParser(NONCE), [stream[:cut], stream[cut:], b"l"])
        assert [m.kind for m in marks] == ["L", "R", "L"], cut
        assert data == stream + b"l", cut


def test_plain_text_passes_whole_and_a_held_mark_start_still_completes():
    parser = MarkParser(NONCE)
    assert parser.feed(b"") == []
    assert [p.data for p in parser.feed(b"plain\r\ntext")] == [b"plain\r\ntext"]
    # A chunk without ESC after one that ended in the start of a mark: the mark is whole.
    data, marks = feed_all(parser, [b"out\x1b]13", b"3;D;0;n0nce;/x", b"\x07", b"tail"])
    assert marks == [Mark("D", exit_code=0, cwd="/x")] and data == b"outtail"


def test_foreign_nonce_is_output_not_a_mark():
    stream = b"\x1b]133;D;0;other;/x\x07\x1b]133;C;evil\x07tail"
    data, marks = feed_all(MarkParser(NONCE), [stream])
    assert marks == []
    assert data == stream


def test_unterminated_look_alike_does_not_swallow_output_forever():
    parser = MarkParser(NONCE)
    data, marks = feed_all(parser, [b"\x1b]133;D;0;n0nce", b"\x1b[31mred"])
    assert marks == [] and data.endswith(b"red")


def test_cwd_with_percent_encoded_non_ascii_bytes():
    data, marks = feed_all(MarkParser(NONCE), [b"\x1b]133;D;0;n0nce;/tmp/%C3%A9t%C3%A9\x07"])
    assert marks[0].cwd == "/tmp/été"


def test_exit_mark():
    _, marks = feed_all(MarkParser(NONCE), [b"\x1b]133;X;5;n0nce\x07"])
    assert marks == [Mark("X", exit_code=5)]


def test_decode_output_octal_escapes():
    assert decode_output(rb"a\015\012b\134c") == b"a\r\nb\\c"
    assert decode_output("é".encode()) == "é".encode()


def test_decode_output_every_byte_as_tmux_escapes_it():
    # tmux writes bytes below 32 and the backslash as \ooo and every other byte as it is.
    everything = bytes(range(256)) * 3 + b"\\0\\012\\x41\\n"
    escaped = b"".join(b"\\%03o" % c if c < 32 or c == 92 else bytes([c]) for c in everything)
    assert decode_output(escaped) == everything
    # An escape followed by digits takes three of them only.
    assert decode_output(rb"\0121") == b"\n1"


def test_clean_output_removes_escapes_and_folds_crlf():
    raw = b"\x1b[1;31mred\x1b[0m\r\n\x1b]0;title\x07line\r\nx\ry\n"
    assert clean_output(raw) == "red\nline\nx\ry\n"
    assert clean_output(b"\xff ok") == "\ufffd ok"


def test_a_stops_traces_are_not_the_commands_output():
    # After the point vterm stopped it: the Ctrl-C's echo, bash's newline and "Killed" go; before it,
    # and without a stop, the same bytes are the command's own.
    assert clean_output(b"stubborn\r\n^CKilled\r\n", stopped_at=10) == "stubborn\n"
    assert clean_output(b"a\r\n^C\r\nKilled\r\n", stopped_at=3) == "a\n"
    assert clean_output(b"abc^C\r\n", stopped_at=3) == "abc"
    assert clean_output(b"^C is a caret\r\n^C\r\n", stopped_at=15) == "^C is a caret\n"
    assert clean_output(b"^C\r\nKilled\r\n") == "^C\nKilled\n"
