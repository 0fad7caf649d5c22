"""Completion webhooks on a live stack (docs/api.md, Webhooks): a command's end POSTed to a receiver on
127.0.0.1 by the control worker, signed as the Standard Webhooks specification says (checked with its
own package, standardwebhooks), retried after failures, refused for addresses that are not allowed,
and shown in the admin.

Only loopback is ever called: the stack allows 127.0.0.1 (VTERM_WEBHOOK_ALLOWED_HOSTS) and 127.0.0.2
stands for an address it does not allow. Retries are shortened here (VTERM_WEBHOOK_RETRY_FIRST/FACTOR,
and the sweep made to hand out the second one); the default schedule is tests/unit/test_webhooks.py's.
"""

from __future__ import annotations

import json
import queue
import signal
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from tests.conftest import Api, admin_browser, control_stack
from tests.ws_viewer import Viewer

pytestmark = pytest.mark.integration

WAIT = 60  # seconds to wait for a POST: a bound, not a timing assertion


@pytest.fixture(scope="module")
def hstack(redis_url, tmp_path_factory):
    # The first retry (1 s) with a Celery countdown, the second (2 s) from beat's sweep; the control
    # worker reads the webhooks queue.
    with control_stack(redis_url, tmp_path_factory.mktemp("webhook-stack"), "wh",
                       VTERM_WEBHOOK_ALLOWED_HOSTS="127.0.0.1", VTERM_WEBHOOK_RETRY_FIRST=1,
                       VTERM_WEBHOOK_RETRY_FACTOR=2, VTERM_WEBHOOK_SWEEP_INTERVAL=1,
                       VTERM_WEBHOOK_COUNTDOWN_MAX=1.5) as st:
        yield st


@pytest.fixture(scope="module")
def carol(hstack) -> Api:
    return Api(hstack.url, hstack.token("carol"))


@pytest.fixture
def shell(carol):
    s = carol.create_session(name="hooks")
    yield s
    carol.http.delete(f"/api/v1/sessions/{s['id']}/")


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every POST (headers, body) and answers the status codes
    of ``answers`` in turn, then 204."""

    def __init__(self, answers: tuple[int, ...] = ()) -> None:
        self.posts: queue.Queue[tuple[dict, bytes]] = queue.Queue()
        pending, posts = list(answers), self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                posts.put(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(pending.pop(0) if pending else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?from=vterm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self) -> tuple[dict, bytes]:
        return self.posts.get(timeout=WAIT)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _secret(api: Api) -> str:
    r = api.http.get("/api/v1/webhooks/secret/")
    assert r.status_code == 200, r.text
    return r.json()["secret"]


def _command(api: Api, session_id: str, command_id: str) -> dict:
    return api.http.get(f"/api/v1/sessions/{session_id}/commands/{command_id}/").json()


def test_an_ended_command_is_posted_signed_as_its_get_answers_it(carol, shell, receiver):
    secret = _secret(carol)
    assert secret.startswith("whsec_") and _secret(carol) == secret, "made once, then the same"
    cmd = carol.run(shell["id"], "echo hook-$((6*7))", notify_url=receiver.url)
    assert cmd["status"] == "succeeded" and cmd["notify_url"] == receiver.url

    headers, body = receiver.next()
    payload = Webhook(secret).verify(body, headers)  # the spec's algorithm, by its own package
    assert payload == _command(carol, shell["id"], cmd["id"]) == cmd
    assert payload["output"] == "hook-42\n"
    assert headers["webhook-id"].startswith("msg_") and headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    # The other road (Django's view, not the lean route), and an end that is not a success.
    r = carol.http.post(f"/api/v1/sessions/{shell['id']}/commands/", content=json.dumps(
        {"command": "exit_code_3() { return 3; }; exit_code_3", "wait": 30, "notify_url": receiver.url}),
        headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    headers2, body2 = receiver.next()
    assert Webhook(secret).verify(body2, headers2) == r.json() and r.json()["status"] == "failed"
    assert headers2["webhook-id"] != headers["webhook-id"]
    # The WebSocket's run frame takes it too.
    viewer = Viewer(str(carol.http.base_url).rstrip("/"), shell["id"], token=carol.token)
    try:
        viewer.send(type="run", command="echo by-websocket", ref="w1", notify_url=receiver.url)
        ran = viewer.until(lambda f: f["type"] == "command" and f.get("ref") == "w1"
                           and f["command"]["status"] not in ("queued", "running"))["command"]
    finally:
        viewer.ws.close()
    headers3, body3 = receiver.next()
    assert Webhook(secret).verify(body3, headers3) == _command(carol, shell["id"], ran["id"])
    assert ran["output"] == "by-websocket\n" and ran["notify_url"] == receiver.url


def test_every_end_is_posted_timed_out_and_interrupted_too(carol, receiver):
    secret = _secret(carol)
    s = carol.create_session(name="hooks-ends")
    timed = carol.run(s["id"], "sleep 30", timeout=1, notify_url=receiver.url)
    headers, body = receiver.next()
    assert Webhook(secret).verify(body, headers)["status"] == timed["status"] == "timed_out"

    running = carol.run(s["id"], "sleep 60", wait=0, notify_url=receiver.url)
    assert carol.http.delete(f"/api/v1/sessions/{s['id']}/").status_code == 204
    headers, body = receiver.next()
    payload = Webhook(secret).verify(body, headers)
    assert (payload["id"], payload["status"]) == (running["id"], "interrupted")


def test_a_flaky_receiver_gets_it_again_until_it_takes_it_and_the_admin_shows_each_try(hstack, carol, shell):
    flaky = Receiver(answers=(500, 503))
    try:
        secret = _secret(carol)
        cmd = carol.run(shell["id"], "echo flaky", notify_url=flaky.url)
        posts = [flaky.next() for _ in range(3)]
    finally:
        flaky.close()
    ids = {h["webhook-id"] for h, _ in posts}
    assert len(ids) == 1, "the same message each time (the spec's webhook-id)"
    for headers, body in posts:
        assert Webhook(secret).verify(body, headers)["id"] == cmd["id"]

    msg_id = ids.pop()
    delivery = str(uuid.UUID(msg_id.removeprefix("msg_")))
    page = f"/admin/vterm_sessions/webhookdelivery/{delivery}/change/"
    with admin_browser(hstack, "hooks-admin", f"/admin/vterm_sessions/webhookdelivery/?q={cmd['id']}") as (
            browser, listing):
        assert listing.status_code == 200 and msg_id in listing.text
        shown = ""
        for _ in range(WAIT * 2):  # the third attempt's row is written after its answer
            shown = browser.get(page).text
            if "Delivered" in shown:
                break
            time.sleep(0.5)
    assert "Delivered" in shown
    for code in ("500", "503", "204"):
        assert f"<p>{code}</p>" in shown, f"the attempt answered {code} is not shown"
    assert f"/admin/vterm_sessions/command/{cmd['id']}/change/" in shown, "the command is linked"


def test_a_refused_address_is_a_400_naming_notify_url_on_both_roads(carol, shell):
    session_url = f"/api/v1/sessions/{shell['id']}/commands/"
    for url, why in [("http://127.0.0.2:9/hook", "not a public address"), ("http://[::1]:9/", "not a public address"),
                     ("ftp://127.0.0.1/", "http or https"), ("http://127.0.0.1/" + "x" * 2048, "2048"),
                     ("http://user:pw@127.0.0.1/", "http or https"), ("http://127.0.0.1:70000/", "Port")]:
        body = json.dumps({"command": "echo never", "notify_url": url})
        answers = [carol.http.post(session_url, content=body, headers={"content-type": ct})
                   for ct in ("application/json", "application/json; charset=utf-8")]  # lean route, then Django
        for r in answers:
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert list(r.json()) == ["notify_url"] and why in r.json()["notify_url"][0], r.text
        assert answers[0].json() == answers[1].json()
    listed = carol.http.get(session_url).json()["results"]
    assert not [c for c in listed if c["command"] == "echo never"], "nothing was run"


def test_a_rotated_secret_signs_what_follows(carol, shell, receiver):
    old = _secret(carol)
    r = carol.http.post("/api/v1/webhooks/secret/")
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new != old and new.startswith("whsec_") and _secret(carol) == new

    carol.run(shell["id"], "echo rotated", notify_url=receiver.url)
    headers, body = receiver.next()
    assert Webhook(new).verify(body, headers)["output"] == "rotated\n"
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, headers)


def test_a_command_interrupted_by_its_backends_loss_is_posted(hstack, carol, receiver):
    """Last here: it kills the stack's one backend (the session is lost: there is nowhere to move it),
    then starts it again. The control worker's reconcile ends the command; its end is POSTed."""
    secret = _secret(carol)
    s = carol.create_session(name="hooks-lost")
    running = carol.run(s["id"], "sleep 300", wait=0, notify_url=receiver.url)
    deadline = time.monotonic() + WAIT
    while _command(carol, s["id"], running["id"])["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    backend = hstack.config.backend_ids()[0]
    hstack.stop_process(backend, signal.SIGKILL)
    try:
        headers, body = receiver.next()
        payload = Webhook(secret).verify(body, headers)
        assert (payload["id"], payload["status"]) == (running["id"], "interrupted")
        assert backend in payload["reason"], payload["reason"]
    finally:
        hstack.start_process(hstack.spec(backend))
