"""Every entry point that creates or ends a session writes the same audit rows as the REST API:
the browser pages (a logged-in browser session over real HTTP) and the admin's terminate action.
The audit is written by the services they all call (sessions/services.py), read back here with
`manage.py vterm_audit_export` from the live stack's database."""

from __future__ import annotations

import json
import re

import httpx
import pytest

pytestmark = pytest.mark.integration


def _audit(stack, session_id: str) -> list[dict]:
    out = stack.config.manage("vterm_audit_export", "--session", session_id).stdout
    return [json.loads(line) for line in out.splitlines()]


def _user(stack, username: str, password: str, *, staff: bool = False) -> None:
    flags = "u.is_staff=u.is_superuser=True; " if staff else ""
    stack.config.manage("shell", "-c", "from django.contrib.auth import get_user_model as g; "
                        f"u,_=g().objects.get_or_create(username={username!r}); {flags}"
                        f"u.set_password({password!r}); u.save()")


def _logged_in(stack, login_path: str, username: str, password: str) -> httpx.Client:
    """A browser's cookie session: Django's login form, CSRF token and all."""
    web = httpx.Client(base_url=stack.url, timeout=60, headers={"Referer": stack.url + "/"})
    page = web.get(login_path)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    r = web.post(login_path, data={"username": username, "password": password, "csrfmiddlewaretoken": token})
    assert r.status_code == 302, r.text
    return web


def _csrf(web: httpx.Client) -> str:
    return web.cookies["csrftoken"]


def test_sessions_made_and_ended_on_the_pages_are_audited(stack):
    _user(stack, "dora", "dora-pages-pw-1")
    web = _logged_in(stack, "/login/", "dora", "dora-pages-pw-1")

    r = web.post("/", data={"name": "from-the-page", "csrfmiddlewaretoken": _csrf(web)})
    assert r.status_code == 302, r.text
    sid = re.fullmatch(r"/sessions/([0-9a-f-]{36})/", r.headers["location"]).group(1)
    r = web.post(f"/sessions/{sid}/end/", data={"csrfmiddlewaretoken": _csrf(web)})
    assert r.status_code == 302, r.text

    events = _audit(stack, sid)
    assert [e["action"] for e in events] == ["session.create", "session.terminate"], events
    assert all(e["user"] == "dora" and e["session"] == sid and e["remote_addr"] == "127.0.0.1" for e in events)
    created = events[0]["detail"]
    assert created["via"] == "page" and created["name"] == "from-the-page" and created["env_names"] == []
    assert created["backend"] and created["cwd"].startswith("/")
    assert events[1]["detail"] == {"owner": "dora", "via": "page"}


def test_sessions_terminated_from_the_admin_are_audited_as_the_staff_users(stack, alice):
    s = alice.create_session(name="ended-by-staff")
    done = alice.create_session(name="already-ended")
    alice.http.delete(f"/api/v1/sessions/{done['id']}/")
    _user(stack, "overseer", "overseer-admin-pw-1", staff=True)
    web = _logged_in(stack, "/admin/login/", "overseer", "overseer-admin-pw-1")

    r = web.post("/admin/vterm_sessions/terminalsession/", data={
        "action": "terminate", "_selected_action": [s["id"], done["id"]], "csrfmiddlewaretoken": _csrf(web)})
    assert r.status_code == 302, r.text
    assert alice.http.get(f"/api/v1/sessions/{s['id']}/").json()["status"] in ("terminating", "terminated")

    events = _audit(stack, s["id"])
    assert [(e["action"], e["user"]) for e in events] == [("session.create", "alice"),
                                                           ("session.terminate", "overseer")], events
    assert all(e["remote_addr"] == "127.0.0.1" for e in events)
    assert "via" not in events[0]["detail"]  # made over REST
    assert events[1]["detail"] == {"owner": "alice", "via": "admin"}
    # The session that had already ended was left alone: the admin ended nothing there.
    assert [(e["action"], e["user"]) for e in _audit(stack, done["id"])] == [("session.create", "alice"),
                                                                             ("session.terminate", "alice")]


def test_rest_rows_are_unchanged_by_the_move_into_the_services(stack, alice):
    s = alice.create_session(name="rest-made", env={"GREETING": "hi"})
    assert alice.http.delete(f"/api/v1/sessions/{s['id']}/").status_code == 204
    assert alice.http.delete(f"/api/v1/sessions/{s['id']}/").status_code == 204  # ended already: still audited
    events = _audit(stack, s["id"])
    assert [e["action"] for e in events] == ["session.create", "session.terminate", "session.terminate"]
    assert events[0]["detail"] == {"name": "rest-made", "cwd": s["cwd"], "backend": s["backend"],
                                   "env_names": ["GREETING"]}
    assert events[1]["detail"] == events[2]["detail"] == {"owner": "alice"}
    assert all(e["user"] == "alice" and e["remote_addr"] == "127.0.0.1" for e in events)
