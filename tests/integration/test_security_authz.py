"""Who may reach what, against the live stack: another user's session is a 404 on every
endpoint (exactly like a missing one), staff see all, nothing answers without a user
but /healthz and /readyz, cookie requests need CSRF, tokens never reach the logs, and
every act lands in the audit trail.
"""

from __future__ import annotations

import json
import re
import uuid

import httpx
import pytest

from tests.conftest import Api

pytestmark = pytest.mark.integration


def _session_endpoints(sid: str, cid: str) -> list[tuple[str, str, dict | None]]:
    """Every per-session endpoint of the REST API, with a valid body where one is needed."""
    s = f"/api/v1/sessions/{sid}"
    c = f"{s}/commands/{cid}"
    return [
        ("GET", f"{s}/", None),
        ("GET", f"{s}/commands/", None),
        ("POST", f"{s}/commands/", {"command": "echo stolen"}),
        ("GET", f"{c}/", None),
        ("GET", f"{c}/output", None),
        ("GET", f"{c}/output?raw=1", None),
        ("POST", f"{c}/interrupt/", None),
        ("POST", f"{s}/input/", {"data": "echo stolen\r"}),
        ("POST", f"{s}/input/", {"keys": ["C-c"]}),
        ("GET", f"{s}/screen/", None),
        ("POST", f"{s}/resize/", {"cols": 50, "rows": 10}),
        ("GET", f"{s}/recording.cast", None),
        ("DELETE", f"{s}/", None),
    ]


def _call(http: httpx.Client, method: str, url: str, body: dict | None) -> httpx.Response:
    return http.request(method, url, json=body) if body is not None else http.request(method, url)


@pytest.fixture(scope="module")
def carol(stack) -> Api:
    return Api(stack.url, stack.token("carol"))


@pytest.fixture(scope="module")
def ops(stack) -> Api:
    return Api(stack.url, stack.token("ops-admin", staff=True))


def test_another_users_session_is_404_on_every_endpoint(alice, carol, capsys):
    s = alice.create_session(name="alice-private")
    sid = s["id"]
    cmd = alice.run(sid, "sleep 30", wait=0)
    cid = cmd["id"]
    missing_sid, missing_cid = str(uuid.uuid4()), str(uuid.uuid4())
    attempts = denied = 0
    for (method, url, body), (_, missing_url, _) in zip(_session_endpoints(sid, cid),
                                                        _session_endpoints(missing_sid, missing_cid)):
        r = _call(carol.http, method, url, body)
        attempts += 1
        missing = _call(carol.http, method, missing_url, body)
        assert r.status_code == 404, (method, url, r.status_code, r.text)
        # Exactly like a missing one: same status, same body.
        assert (r.status_code, r.content) == (missing.status_code, missing.content), (method, url)
        assert sid not in r.text and "alice" not in r.text
        denied += 1
    # Nothing of the attempts reached the session: the command still runs, no resize, no input.
    assert sid not in [x["id"] for x in carol.http.get("/api/v1/sessions/").json()["results"]]
    got = alice.http.get(f"/api/v1/sessions/{sid}/").json()
    assert got["status"] == "active" and (got["cols"], got["rows"]) == (120, 40)
    assert alice.http.get(f"/api/v1/sessions/{sid}/commands/{cid}/").json()["status"] == "running"
    assert [c["command"] for c in alice.http.get(f"/api/v1/sessions/{sid}/commands/").json()["results"]] == \
        ["sleep 30"]
    alice.http.post(f"/api/v1/sessions/{sid}/commands/{cid}/interrupt/")
    assert alice.wait_command(sid, cid)["status"] == "interrupted"
    assert alice.run(sid, "echo still mine")["output"] == "still mine\n"
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    with capsys.disabled():
        print(f"\n[security] REST cross-user attempts: {attempts}, denied (404): {denied}")


def test_staff_see_and_reach_every_session(alice, ops):
    s = alice.create_session(name="for-staff")
    sid = s["id"]
    assert sid in [x["id"] for x in ops.http.get("/api/v1/sessions/", ).json()["results"]]
    assert ops.http.get(f"/api/v1/sessions/{sid}/").json()["owner"] == "alice"
    assert ops.http.get(f"/api/v1/sessions/{sid}/screen/").status_code == 200
    assert ops.run(sid, "echo by staff")["output"] == "by staff\n"
    assert ops.http.delete(f"/api/v1/sessions/{sid}/").status_code == 204


def test_nothing_answers_without_a_user(stack, alice):
    from django.urls import URLPattern, get_resolver

    anon = httpx.Client(base_url=stack.url, timeout=30)
    sid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    api_patterns = [p for p in get_resolver("sessions.urls").url_patterns if isinstance(p, URLPattern)]
    assert len(api_patterns) >= 10
    checked = 0
    for p in api_patterns:
        route = str(p.pattern).replace("<uuid:session_id>", sid).replace("<uuid:command_id>", cid)
        route = re.sub(r"<uuid:\w+>", str(uuid.uuid4()), route)  # any other id (a job's)
        route = re.sub(r"<[^>]+>", "x", route)
        for method in ("GET", "POST", "DELETE"):
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Token abc"},
                            {"Authorization": f"Basic {alice.token}"}):
                r = anon.request(method, f"/api/v1/{route}", headers=headers)
                assert r.status_code == 401, (method, route, headers, r.status_code)
                checked += 1
    for path in ("/api/schema/", "/api/schema/docs/"):
        assert anon.get(path).status_code in (401, 403), path
    # A token in the URL is never taken as a credential (a throwaway user's: this lands in the access log).
    throwaway = stack.token("url-token-user")
    assert anon.get("/api/v1/sessions/", params={"token": throwaway}).status_code == 401
    assert anon.get("/api/v1/sessions/", params={"access_token": throwaway}).status_code == 401
    assert anon.get("/healthz").status_code == 200
    assert anon.get("/readyz").status_code == 200
    assert checked > 100


def test_cookie_requests_need_csrf(stack):
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                        "u,_=g().objects.get_or_create(username='dave'); u.set_password('dave-pass-123'); u.save()")
    web = httpx.Client(base_url=stack.url, timeout=30)
    page = web.get("/api-auth/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = web.post("/api-auth/login/", data={"username": "dave", "password": "dave-pass-123",
                                           "csrfmiddlewaretoken": token}, headers={"Referer": stack.url + "/"})
    assert r.status_code == 302 and "sessionid" in web.cookies
    assert web.get("/api/v1/sessions/").status_code == 200
    # A cookie alone (a cross-site form) may not change anything.
    r = web.post("/api/v1/sessions/", json={})
    assert r.status_code == 403 and "CSRF" in r.text
    r = web.post("/api/v1/sessions/", json={}, headers={"X-CSRFToken": web.cookies["csrftoken"],
                                                        "Referer": stack.url + "/"})
    assert r.status_code == 201, r.text
    assert web.delete(f"/api/v1/sessions/{r.json()['id']}/",
                      headers={"X-CSRFToken": web.cookies["csrftoken"], "Referer": stack.url + "/"}).status_code == 204


def test_audit_trail_records_who_did_what_from_where(stack, alice):
    s = alice.create_session(name="audited")
    sid = s["id"]
    ran = alice.run(sid, "echo audited-command")
    long = alice.run(sid, "sleep 20", wait=0)
    alice.http.post(f"/api/v1/sessions/{sid}/commands/{long['id']}/interrupt/")
    alice.wait_command(sid, long["id"])
    alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"data": "secret-typed\r"})
    alice.http.post(f"/api/v1/sessions/{sid}/input/", json={"keys": ["C-c"]})
    alice.http.post(f"/api/v1/sessions/{sid}/resize/", json={"cols": 90, "rows": 30})
    alice.http.get(f"/api/v1/sessions/{sid}/recording.cast")
    alice.http.delete(f"/api/v1/sessions/{sid}/")
    out = stack.config.manage("vterm_audit_export", "--session", sid).stdout
    events = [json.loads(line) for line in out.splitlines()]
    actions = [e["action"] for e in events]
    assert actions == ["session.create", "command.run", "command.run", "command.interrupt", "session.input",
                       "session.input", "session.resize", "session.recording", "session.terminate"], actions
    assert all(e["user"] == "alice" and e["session"] == sid and e["remote_addr"] == "127.0.0.1" for e in events)
    assert events[1]["detail"] == {"command_id": ran["id"], "command": "echo audited-command"}
    assert events[4]["detail"] == {"chars": len("secret-typed\r")}  # keystrokes: size only
    assert "secret-typed" not in out
    assert events[5]["detail"]["keys"] == ["C-c"]
    assert events[6]["detail"] == {"cols": 90, "rows": 30}
    # Filters, and a file.
    only = stack.config.manage("vterm_audit_export", "--session", sid, "--action", "command.run").stdout
    assert len(only.splitlines()) == 2
    bad = stack.config.manage("vterm_audit_export", "--session", "not-a-uuid", check=False)
    assert bad.returncode != 0 and "not a session id" in bad.stderr


def test_admin_lists_and_exports_the_audit_trail(stack, alice):
    s = alice.create_session(name="admin-audit")
    alice.http.delete(f"/api/v1/sessions/{s['id']}/")
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                        "u,_=g().objects.get_or_create(username='auditor'); u.is_staff=u.is_superuser=True; "
                        "u.set_password('auditor-pass-123'); u.save()")
    web = httpx.Client(base_url=stack.url, timeout=30, headers={"Referer": stack.url + "/"})
    page = web.get("/admin/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = web.post("/admin/login/", data={"username": "auditor", "password": "auditor-pass-123",
                                        "csrfmiddlewaretoken": token, "next": "/admin/"})
    assert r.status_code == 302
    listing = web.get("/admin/vterm_sessions/auditevent/", params={"action__exact": "session.create",
                                                                    "q": s["id"]})
    assert listing.status_code == 200 and s["id"] in listing.text
    ids = re.findall(r'name="_selected_action" value="(\d+)"', listing.text)
    assert ids
    r = web.post("/admin/vterm_sessions/auditevent/", data={
        "action": "export_jsonl", "_selected_action": ids, "csrfmiddlewaretoken": web.cookies["csrftoken"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [e["action"] for e in lines] == ["session.create"] and lines[0]["session"] == s["id"]
    # Read-only: nobody edits history.
    assert web.get(f"/admin/vterm_sessions/auditevent/{ids[0]}/delete/").status_code == 403


def test_tokens_never_reach_the_logs(stack, alice):
    alice.http.get("/api/v1/sessions/")
    assert (stack.log_dir / "web.log").exists()
    for f in stack.log_dir.glob("*.log"):
        assert alice.token not in f.read_text(errors="replace"), f
