"""Session recordings: every session's output, downloadable by its owner as asciicast v2.

The file is checked twice: parsed strictly against the v2 format here, and replayed by
the asciinema program itself (`asciinema cat`, from the asciinema package).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _parse_cast(text: str) -> tuple[dict, list[list]]:
    """asciicast v2, strictly: a header object, then [time, code, data] events in time order."""
    lines = text.splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2
    assert isinstance(header["width"], int) and isinstance(header["height"], int)
    assert isinstance(header["timestamp"], int)
    events = [json.loads(line) for line in lines[1:] if line]
    last = 0.0
    for ev in events:
        assert isinstance(ev, list) and len(ev) == 3, ev
        t, code, data = ev
        assert isinstance(t, (int, float)) and t >= last, (t, last)
        assert code == "o" and isinstance(data, str)
        last = t
    return header, events


def test_recording_is_asciicast_v2_that_asciinema_plays(alice, bob, tmp_path):
    s = alice.create_session(name="recorded", cols=100, rows=30)
    sid = s["id"]
    alice.run(sid, "echo first-line")
    alice.run(sid, "sleep 0.3; printf 'second \\033[1mbold\\033[0m é✓\\n'")
    alice.run(sid, "echo third-line")
    r = alice.http.get(f"/api/v1/sessions/{sid}/recording.cast")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-asciicast")
    assert f"vterm-{sid}.cast" in r.headers["content-disposition"]
    header, events = _parse_cast(r.text)
    assert (header["width"], header["height"]) == (100, 30) and header["title"] == "recorded"
    output = "".join(e[2] for e in events)
    for needle in ("first-line", "second \x1b[1mbold\x1b[0m é✓", "third-line"):
        assert needle in output
    # Time moves on: the sleep shows between the first and the third line.
    t_first = next(e[0] for e in events if "first-line" in e[2])
    t_third = next(e[0] for e in events if "third-line" in e[2])
    assert t_third > t_first
    # asciinema itself reads and replays it.
    cast = tmp_path / "s.cast"
    cast.write_bytes(r.content)
    asciinema = shutil.which("asciinema", path=str(Path(sys.executable).parent)) or shutil.which("asciinema")
    assert asciinema, "asciinema is in the dev extras"
    played = subprocess.run([asciinema, "cat", str(cast)], capture_output=True, timeout=60, check=False)
    assert played.returncode == 0, played.stderr
    assert b"first-line" in played.stdout and b"third-line" in played.stdout
    # Only its owner (or staff) may download it.
    assert bob.http.get(f"/api/v1/sessions/{sid}/recording.cast").status_code == 404
    # Still there after the session ended.
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    after = alice.http.get(f"/api/v1/sessions/{sid}/recording.cast")
    assert after.status_code == 200 and "third-line" in after.text


def test_recording_reads_a_long_stream_in_order_with_times_that_never_go_back(redis_url, settings):
    """Straight against Redis: more frames than one page, a frame without a time, a clock step back."""
    import asyncio
    import uuid
    from datetime import datetime

    from sessions.models import TerminalSession
    from sessions.recording import PAGE, recording_lines
    from sessions.redis_state import output_stream_key
    from vterm_project.redis_config import client_for_url

    settings.REDIS_URL = redis_url
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"rec{uuid.uuid4().hex[:6]}:"}
    session = TerminalSession(id=uuid.uuid4(), name="", cols=80, rows=24,
                              created_at=datetime.fromtimestamp(1000.0, tz=UTC))
    r = client_for_url(redis_url)
    key = output_stream_key(str(session.pk))
    n = PAGE * 2 + 7
    for seq in range(1, n + 1):
        fields = {"d": f"frame-{seq}\n"}
        if seq != 5:
            fields["t"] = f"{1000.0 + seq / 100 - (0.5 if seq == 600 else 0):.6f}"
        r.xadd(key, fields, id=f"{seq}-1")

    async def collect():
        return [line async for line in recording_lines(session)]
    try:
        text = "".join(asyncio.run(collect()))
    finally:
        r.delete(key)
    header, events = _parse_cast(text)
    assert header["title"] == str(session.pk)
    assert [e[2] for e in events] == [f"frame-{i}\n" for i in range(1, n + 1)]
    assert events[4][0] == events[3][0]  # no time: the one before it
    assert events[599][0] == events[598][0]  # a step back is held level
    assert events[-1][0] == pytest.approx(n / 100)


def test_an_ended_sessions_stream_expires_after_the_retention(alice, redis_url):
    import time

    from vterm_project.redis_config import client_for_url

    sid = alice.create_session()["id"]
    alice.run(sid, "echo kept-for-a-while")
    r = client_for_url(redis_url)
    key = f"vterm:out:{sid}"
    assert r.ttl(key) == -1  # a live session's stream does not expire
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    deadline = time.monotonic() + 20
    while alice.http.get(f"/api/v1/sessions/{sid}/").json()["status"] != "terminated":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # VTERM_STREAM_RETENTION, 7 days by default; the recording is still there meanwhile.
    assert 7 * 24 * 3600 - 60 < r.ttl(key) <= 7 * 24 * 3600
    assert "kept-for-a-while" in alice.http.get(f"/api/v1/sessions/{sid}/recording.cast").text


def _parse_cast_v3(text: str) -> tuple[dict, list[list], list[float]]:
    """asciicast v3, strictly: every line JSON, a header with a term object, then [interval, code,
    data] events whose intervals are never negative; also each event's time (the intervals summed)."""
    lines = text.splitlines()
    parsed = [json.loads(line) for line in lines]
    header, events = parsed[0], parsed[1:]
    assert header["version"] == 3
    term = header["term"]
    assert isinstance(term["cols"], int) and isinstance(term["rows"], int) and term["type"] == "xterm-256color"
    assert isinstance(header["timestamp"], int)
    times, now = [], 0.0
    for ev in events:
        assert isinstance(ev, list) and len(ev) == 3, ev
        interval, code, data = ev
        assert isinstance(interval, (int, float)) and interval >= 0, ev
        assert code in ("o", "m", "x") and isinstance(data, str), ev
        now += interval
        times.append(now)
    return header, events, times


def _wait_ended(api, sid: str) -> dict:
    import time

    deadline = time.monotonic() + 20
    while (s := api.http.get(f"/api/v1/sessions/{sid}/").json())["status"] != "terminated":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return s


def test_recording_v3_marks_each_command_and_the_end(stack, bob):
    from datetime import datetime

    from tests.conftest import Api

    carol = Api(stack.url, stack.token("carol"))  # a recording budget of its own (VTERM_RECORDING_BURST)
    s = carol.create_session(name="marked", cols=90, rows=25)
    sid = s["id"]
    # Quoted so that the echo of the typed line does not hold what the command prints.
    commands = ["echo one-'out'", "sleep 0.3; echo two-'out'", "printf 'multi\\nline\\n'\necho three-'out'", "(exit 3)"]
    ran = [carol.run(sid, c) for c in commands]
    r = carol.http.get(f"/api/v1/sessions/{sid}/recording.cast", params={"version": 3})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-asciicast")
    assert f"vterm-{sid}.cast" in r.headers["content-disposition"]
    header, events, times = _parse_cast_v3(r.text)
    assert (header["term"]["cols"], header["term"]["rows"], header["title"]) == (90, 25, "marked")
    created = datetime.fromisoformat(s["created_at"]).timestamp()
    assert header["timestamp"] == int(created)
    marks = [(t, e[2]) for t, e in zip(times, events) if e[1] == "m"]
    assert [m[1] for m in marks] == commands
    # Each marker stands at its command's started_at on the session's timeline...
    for (t, _), cmd in zip(marks, ran):
        assert t == pytest.approx(datetime.fromisoformat(cmd["started_at"]).timestamp() - created, abs=1e-5)
    # ...and before what it printed.
    for (marked, _), needle in zip(marks, ("one-out", "two-out", "three-out")):
        assert marked <= next(t for t, e in zip(times, events) if e[1] == "o" and needle in e[2])
    assert "x" not in [e[1] for e in events]  # still live
    assert bob.http.get(f"/api/v1/sessions/{sid}/recording.cast", params={"version": 3}).status_code == 404

    carol.http.delete(f"/api/v1/sessions/{sid}/")
    ended = _wait_ended(carol, sid)
    r = carol.http.get(f"/api/v1/sessions/{sid}/recording.cast", params={"version": 3})
    header, events, times = _parse_cast_v3(r.text)
    assert [e[2] for e in events if e[1] == "m"] == commands
    assert events[-1][1:] == ["x", "3"], events[-1]  # the shell's last $?
    assert [e[1] for e in events].count("x") == 1
    assert times[-1] >= times[-2]
    assert ended["status"] == "terminated"
    # Version 2 stays the default, without markers.
    v2 = carol.http.get(f"/api/v1/sessions/{sid}/recording.cast")
    assert v2.content == carol.http.get(f"/api/v1/sessions/{sid}/recording.cast", params={"version": 2}).content
    _, events2 = _parse_cast(v2.text)
    assert [e[2] for e in events2] == [e[2] for e in events if e[1] == "o"]


@pytest.mark.parametrize("version", ["1", "4", "3.0", "v3", ""])
def test_recording_of_another_version_is_a_400_naming_it(alice, session, version):
    r = alice.http.get(f"/api/v1/sessions/{session['id']}/recording.cast", params={"version": version})
    assert r.status_code == 400 and "version" in r.json(), r.text


@pytest.mark.django_db(transaction=True)
def test_recording_v3_of_a_trimmed_stream_marks_only_the_commands_it_holds(redis_url, settings):
    """Straight against Redis and the database: the stream's oldest frames are gone (trimmed), so
    are the markers of the commands before them; the exit event is the last command's code."""
    import asyncio
    import uuid
    from datetime import datetime

    from django.contrib.auth import get_user_model

    from sessions.models import Command, TerminalSession
    from sessions.recording import recording_lines_for
    from sessions.redis_state import output_stream_key
    from vterm_project.redis_config import client_for_url

    def at(t: float) -> datetime:
        return datetime.fromtimestamp(t, tz=UTC)

    settings.REDIS_URL = redis_url
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"rec{uuid.uuid4().hex[:6]}:"}
    owner = get_user_model().objects.create(username=f"rec-{uuid.uuid4().hex[:6]}")
    session = TerminalSession.objects.create(owner=owner, name="t", cols=80, rows=24,
                                             status=TerminalSession.Status.TERMINATED)
    TerminalSession.objects.filter(pk=session.pk).update(created_at=at(1000.0), terminated_at=at(1003.0))
    session.refresh_from_db()
    for seq, started, text, code in ((1, 1000.2, "echo gone", 0), (2, 1000.6, "echo kept", 0),
                                     (3, None, "never started", None), (4, 1001.0, "false 7", 7)):
        Command.objects.create(session=session, seq=seq, command=text, started_at=started and at(started),
                               exit_code=code, status="succeeded" if code == 0 else "failed")
    r = client_for_url(redis_url)
    key = output_stream_key(str(session.pk))
    for seq, t in ((3, 1000.5), (4, 1000.7), (5, 1001.1), (6, 1001.2)):  # frames 1 and 2 were trimmed
        r.xadd(key, {"d": f"frame-{seq}", "t": f"{t:.6f}"}, id=f"{seq}-1")

    async def collect():
        return [line async for line in recording_lines_for(session, 3)]
    try:
        lines = asyncio.run(collect())
    finally:
        r.delete(key)
    header, events, times = _parse_cast_v3("".join(lines))
    assert header["timestamp"] == 1000
    assert [(e[1], e[2]) for e in events] == [
        ("o", "frame-3"), ("m", "echo kept"), ("o", "frame-4"), ("m", "false 7"), ("o", "frame-5"),
        ("o", "frame-6"), ("x", "7")]
    assert times == pytest.approx([0.5, 0.6, 0.7, 1.0, 1.1, 1.2, 3.0], abs=1e-6)
