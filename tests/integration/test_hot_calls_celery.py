"""VTERM_HOT_CALLS=celery: commands, keystrokes, Ctrl-C and resizes as Celery tasks instead of the inbox list.

The same handler carries them out (workers/inbox.py); this checks the other transport end to end.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import Api, make_stack
from tests.ws_viewer import Viewer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def celery_api(redis_url, tmp_path_factory):
    st = make_stack(redis_url, tmp_path_factory.mktemp("celery-hot"), backends=1, prefix="hc",
                    VTERM_HOT_CALLS="celery", VTERM_REDIS_PREFIX="hc:")
    st.start()
    try:
        yield Api(st.url, st.token("hot-celery"))
    finally:
        st.stop()


def test_commands_input_interrupt_and_resize_through_celery(celery_api):
    api = celery_api
    sid = api.create_session()["id"]
    first = api.run(sid, "cd /tmp && echo one", wait=20)
    assert (first["output"], first["exit_code"], first["cwd"]) == ("one\n", 0, "/tmp")
    # In order: a queued command runs after the one before it.
    a = api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "sleep 0.3; echo a"}).json()
    b = api.run(sid, "echo b", wait=20)
    assert api.wait_command(sid, a["id"])["output"] == "a\n" and b["output"] == "b\n"
    # Keystrokes to a program reading stdin.
    reader = api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "read x; echo got:$x"}).json()
    assert api.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "hi\r"}).status_code == 202
    assert api.wait_command(sid, reader["id"])["output"].endswith("got:hi\n")
    # Keystrokes from a WebSocket (sessions/services.session_input_ws) take the same road.
    reader = api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "read y; echo ws:$y"}).json()
    viewer = Viewer(str(api.http.base_url).rstrip("/"), sid, token=api.token)
    viewer.send(type="input", data="typed\r")
    assert api.wait_command(sid, reader["id"])["output"].endswith("ws:typed\n")
    viewer.close()
    # Ctrl-C.
    slow = api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "sleep 30"}).json()
    time.sleep(0.3)
    assert api.http.post(f"/api/v1/sessions/{sid}/commands/{slow['id']}/interrupt/").status_code == 202
    assert api.wait_command(sid, slow["id"])["status"] == "interrupted"
    # Resize.
    assert api.http.post(f"/api/v1/sessions/{sid}/resize/", json={"cols": 91, "rows": 33}).status_code == 200
    assert api.run(sid, "stty size", wait=20)["output"] == "33 91\n"
