"""manage.py vterm_backup / vterm_restore: back up a stack's database and Redis, wipe both, restore, and
find every record again (compared with Django's own dumpdata, and read back through the API)."""

from __future__ import annotations

import json
import os
import stat
import time
import uuid

import httpx
import pytest
import redis

from tests.conftest import make_stack
from vterm.client import Client
from vterm_project.redis_config import client_for_url

pytestmark = pytest.mark.integration

# Every row of users, tokens and the sessions app, with full-precision times (dumpdata keeps milliseconds).
DUMP_CODE = """
import json
from django.apps import apps
from django.core import serializers
models = [apps.get_model("auth", "User"), apps.get_model("authtoken", "Token"),
          *apps.get_app_config("vterm_sessions").get_models()]
rows = []
for m in models:
    rows += serializers.serialize("python", m.objects.all(), use_natural_foreign_keys=True,
                                  use_natural_primary_keys=True)
print(json.dumps(rows, default=str))
"""


def _dump(st) -> list[str]:
    """Every row, each as canonical JSON, sorted: equal lists mean equal databases."""
    rows = json.loads(st.config.manage("shell", "-c", DUMP_CODE).stdout.strip().splitlines()[-1])
    return sorted(json.dumps(o, sort_keys=True, default=str) for o in rows)


def _streams(r: redis.Redis, prefix: str) -> dict[bytes, list]:
    return {key: r.xrange(key) for key in r.scan_iter(match=f"{prefix}vterm:out:*")}


@pytest.fixture(scope="module")
def bstack(redis_url, tmp_path_factory):
    prefix = f"bk{uuid.uuid4().hex[:6]}:"
    st = make_stack(redis_url, tmp_path_factory.mktemp("backup-stack"), backends=1, prefix="bk",
                    VTERM_REDIS_PREFIX=prefix)
    st.redis_prefix = prefix
    try:
        st.start(timeout=120)
        yield st
    finally:
        st.stop()


def test_backup_wipe_restore_finds_every_record(bstack, redis_url, tmp_path):
    st = bstack
    r = client_for_url(redis_url)
    token, other = st.token("backup-alice"), st.token("backup-carol", staff=True)
    with Client(st.url, token) as vt:
        live = vt.create_session(name="kept-live", env={"K": "v"}, cwd="/tmp")
        vt.run(live, "echo kept; printf '\\033[1mbold\\033[0m é\\n'")
        vt.run(live, "false")
        vt.run(live, "sleep 5", timeout=0.3)
        over = vt.create_session(name="kept-ended")
        vt.run(over, "cd /usr && pwd")
        vt.end_session(over)
        deadline = time.monotonic() + 30
        while vt.get_session(over).status != "terminated" and time.monotonic() < deadline:
            time.sleep(0.2)
        history = {s: [c.raw for c in vt.history(s)] for s in (live.id, over.id)}
    with Client(st.url, other) as staff:
        assert {live.id, over.id} <= {s.id for s in staff.list_sessions()}

    # Quiesce: nothing writes while the "before" picture is taken.
    st.stop()
    before = _dump(st)
    streams_before = _streams(r, st.redis_prefix)
    models = {json.loads(o)["model"] for o in before}
    assert {"auth.user", "authtoken.token", "vterm_sessions.backend", "vterm_sessions.terminalsession",
            "vterm_sessions.command", "vterm_sessions.sessionevent", "vterm_sessions.auditevent"} <= models
    assert streams_before, "the live session has an output stream"

    path = tmp_path / "vterm-backup.json.gz"
    out = st.config.manage("vterm_backup", str(path)).stdout
    counts = dict(line.rsplit(None, 1) for line in out.splitlines())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, "it holds tokens: owner-only"
    assert int(counts["vterm_sessions.command"]) == 4 and int(counts["vterm_sessions.terminalsession"]) == 2
    assert int(counts["redis.output_streams"]) == 1, "only live sessions' streams are kept"

    # Wipe the database and vterm's Redis keys.
    st.config.manage("flush", "--noinput")
    for key in list(r.scan_iter(match=f"{st.redis_prefix}vterm:out:*")):
        r.delete(key)
    assert _dump(st) == [] and _streams(r, st.redis_prefix) == {}

    restored = st.config.manage("vterm_restore", str(path)).stdout
    assert dict(line.rsplit(None, 1) for line in restored.splitlines()) == counts
    assert _dump(st) == before, "every row is back, field for field"
    live_key = f"{st.redis_prefix}vterm:out:{live.id}".encode()
    assert _streams(r, st.redis_prefix) == {live_key: streams_before[live_key]}

    # A second restore onto the data is refused unless asked to replace it.
    again = st.config.manage("vterm_restore", str(path), check=False)
    assert again.returncode == 1 and "already holds vterm data" in again.stderr
    replaced = st.config.manage("vterm_restore", str(path), "--replace")
    assert dict(line.rsplit(None, 1) for line in replaced.stdout.splitlines()) == counts
    assert _dump(st) == before

    # And the service reads it: the restored token works and the histories are whole.
    st.start_process(st.spec("web"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(st.url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    with Client(st.url, token) as vt:
        assert {s.id: s.name for s in vt.list_sessions()} == {live.id: "kept-live", over.id: "kept-ended"}
        for sid, commands in history.items():
            assert [c.raw for c in vt.history(sid)] == commands


def test_restore_refuses_what_is_not_a_backup(bstack, tmp_path):
    bad = tmp_path / "not-a-backup.json"
    bad.write_text('{"hello": 1}')
    r = bstack.config.manage("vterm_restore", str(bad), check=False)
    assert r.returncode == 1 and "not a vterm backup" in r.stderr
    r = bstack.config.manage("vterm_restore", str(tmp_path / "missing.json"), check=False)
    assert r.returncode == 1 and "cannot read" in r.stderr
