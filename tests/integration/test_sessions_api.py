"""Sessions, screen, resize, validation and ownership over REST, against the live stack."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_create_read_list_delete(alice, stack):
    s = alice.create_session(name="mine", cwd="/tmp", cols=100, rows=30)
    assert s["status"] == "active" and s["owner"] == "alice" and s["cwd"] == "/tmp"
    assert (s["cols"], s["rows"]) == (100, 30) and s["backend"] and s["command_count"] == 0
    got = alice.http.get(f"/api/v1/sessions/{s['id']}/").json()
    assert got["id"] == s["id"]
    listed = alice.http.get("/api/v1/sessions/").json()
    assert {"count", "next", "previous", "results"} <= set(listed)
    assert s["id"] in [x["id"] for x in listed["results"]]
    assert alice.http.delete(f"/api/v1/sessions/{s['id']}/").status_code == 204
    deadline = time.monotonic() + 10
    while alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["status"] != "terminated":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = alice.http.post(f"/api/v1/sessions/{s['id']}/commands/", json={"command": "true"})
    assert r.status_code == 409


def test_screen_and_resize(alice, session):
    sid = session["id"]
    alice.run(sid, "clear; echo on-screen")
    screen = alice.http.get(f"/api/v1/sessions/{sid}/screen/").json()
    assert (screen["cols"], screen["rows"]) == (120, 40) and len(screen["lines"]) == 40
    assert any("on-screen" in line for line in screen["lines"])
    assert set(screen["cursor"]) == {"x", "y"}
    r = alice.http.post(f"/api/v1/sessions/{sid}/resize/", json={"cols": 80, "rows": 24})
    assert r.status_code == 200 and (r.json()["cols"], r.json()["rows"]) == (80, 24)
    assert alice.run(sid, "stty size")["output"] == "24 80\n"


def test_env_and_cwd_of_new_session(alice):
    s = alice.create_session(cwd="/usr", env={"A_B": "x y", "EMPTY": ""})
    assert alice.run(s["id"], 'pwd; echo "[$A_B][$EMPTY]"')["output"] == "/usr\n[x y][]\n"
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")


@pytest.mark.parametrize("body, field", [
    ({"cwd": "relative/path"}, "cwd"),
    ({"cwd": "/no/such/dir/anywhere"}, "cwd"),
    ({"cwd": "/tmp\u0000x"}, "cwd"),
    ({"env": {"1BAD": "x"}}, "env"),
    ({"env": {"OK": "nul\u0000"}}, "env"),
    ({"env": {"PROMPT_COMMAND": "x"}}, "env"),
    ({"env": ["not", "a", "dict"]}, "env"),
    ({"cols": 100000}, "cols"),
    ({"rows": 0}, "rows"),
    ({"cols": "wide"}, "cols"),
    ({"name": "x" * 500}, "name"),
])
def test_bad_session_input_is_a_400_naming_the_field(alice, body, field):
    r = alice.http.post("/api/v1/sessions/", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()


@pytest.mark.parametrize("body, field", [
    ({"command": ""}, "command"),
    ({"command": "   \n  "}, "command"),
    ({"command": "x" * 70000}, "command"),
    ({"command": "echo \u0000"}, "command"),
    ({"command": "echo \u001b[31m"}, "command"),
    ({"command": 42}, "command"),
    ({}, "command"),
    ({"command": "true", "timeout": -1}, "timeout"),
    ({"command": "true", "timeout": "soon"}, "timeout"),
    ({"command": "true", "idle_timeout": 0}, "idle_timeout"),
    ({"command": "true", "idle_timeout": -1}, "idle_timeout"),
    ({"command": "true", "idle_timeout": "soon"}, "idle_timeout"),
    ({"command": "true", "idle_timeout": 10**9}, "idle_timeout"),
    ({"command": "true", "wait": 10**9}, "wait"),
])
def test_bad_command_is_a_400_and_the_session_carries_on(alice, session, body, field):
    sid = session["id"]
    r = alice.http.post(f"/api/v1/sessions/{sid}/commands/", json=body)
    assert r.status_code == 400, r.text
    assert field in r.json()
    assert alice.run(sid, "echo alive")["output"] == "alive\n"


@pytest.mark.parametrize("body", [
    {"data": "a", "keys": ["Enter"]},
    {},
    {"keys": ["Enter; kill-server"]},
    {"keys": ["-t"]},
    {"data": "\u0000"},
    {"keys": "Enter"},
])
def test_bad_input_is_a_400(alice, session, body):
    r = alice.http.post(f"/api/v1/sessions/{session['id']}/input/", json=body)
    assert r.status_code == 400, r.text


def test_not_json_and_wrong_types_are_400(alice, session):
    r = alice.http.post("/api/v1/sessions/", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    r = alice.http.post(f"/api/v1/sessions/{session['id']}/commands/", json=["echo"])
    assert r.status_code == 400
    r = alice.http.post(f"/api/v1/sessions/{session['id']}/resize/", json={"cols": 80})
    assert r.status_code == 400 and "rows" in r.json()


def test_unknown_and_foreign_sessions_are_404(alice, bob, session):
    missing = "00000000-0000-0000-0000-000000000000"
    for api, sid in ((alice, missing), (bob, session["id"])):
        assert api.http.get(f"/api/v1/sessions/{sid}/").status_code == 404
        assert api.http.post(f"/api/v1/sessions/{sid}/commands/", json={"command": "id"}).status_code == 404
        assert api.http.get(f"/api/v1/sessions/{sid}/commands/").status_code == 404
        assert api.http.get(f"/api/v1/sessions/{sid}/screen/").status_code == 404
        assert api.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "x"}).status_code == 404
        assert api.http.post(f"/api/v1/sessions/{sid}/resize/", json={"cols": 80, "rows": 24}).status_code == 404
        assert api.http.delete(f"/api/v1/sessions/{sid}/").status_code == 404
    assert session["id"] not in [s["id"] for s in bob.http.get("/api/v1/sessions/").json()["results"]]
    assert alice.http.get(f"/api/v1/sessions/{session['id']}/").status_code == 200


def test_no_auth_is_401_and_health_is_open(stack):
    anon = httpx.Client(base_url=stack.url)
    assert anon.get("/api/v1/sessions/").status_code == 401
    assert httpx.get(stack.url + "/api/v1/sessions/", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert anon.get("/healthz").status_code == 200
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"


def test_openapi_schema_is_served(alice):
    r = alice.http.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert r.status_code == 200
    schema = r.json()
    assert "/api/v1/sessions/{session_id}/commands/" in schema["paths"]
    assert alice.http.get("/api/schema/docs/").status_code == 200
