"""Several web processes on one port (`make run`'s default, vterm_project/web_listen.py), on SQLite:
both take connections, commands written by both (and ended by the backend) all succeed, /metrics
merges their django-prometheus series, and with one of them killed the other serves alone."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.conftest import Api, _keep_logs, make_stack
from tests.prom import scrape, value

pytestmark = pytest.mark.integration

CLIENTS = 16
POST_COMMANDS = ("django_http_requests_total_by_view_transport_method_total",
                 {"view": "command-list", "method": "POST", "transport": "http"})


@pytest.fixture(scope="module")
def two_webs(redis_url, tmp_path_factory):
    st = make_stack(redis_url, tmp_path_factory.mktemp("webs"), backends=1, prefix="wp")
    st.config.web_processes = 2
    try:
        st.start()
        yield st
    finally:
        st.stop()
        _keep_logs(st, "two_webs")


def _connections_on_port(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


def test_both_processes_serve_and_every_command_ends(two_webs):
    token = two_webs.token("webs")
    clients = [Api(two_webs.url, token) for _ in range(CLIENTS)]  # one connection each, kept alive
    sids = [clients[0].create_session()["id"] for _ in range(4)]

    def run(n: int) -> list[dict]:
        return [clients[n].run(sids[n % len(sids)], f"echo {n}-{i}", wait=30) for i in range(5)]

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for batch in pool.map(run, range(CLIENTS)) for r in batch]
    assert [r["status"] for r in results] == ["succeeded"] * CLIENTS * 5
    assert sorted(r["output"].strip() for r in results) == sorted(f"{n}-{i}" for n in range(CLIENTS) for i in range(5))
    for sid in sids:  # each session's commands numbered in order, none missing, whichever process took them
        page = clients[0].http.get(f"/api/v1/sessions/{sid}/commands/").json()  # 20 of them: one page
        assert sorted(c["seq"] for c in page["results"]) == list(range(1, CLIENTS * 5 // len(sids) + 1))
    # The kernel spread the clients' connections over both processes (all 16 on one: 2 in 65536).
    port = two_webs.config.port
    held = {name: _connections_on_port(two_webs.procs[name].pid, port) for name in ("web", "web-2")}
    assert all(held.values()) and sum(held.values()) >= CLIENTS, held
    # Whichever process answers /metrics, it counts every process's requests.
    for _ in range(6):
        assert value(scrape(two_webs.url), POST_COMMANDS[0], **POST_COMMANDS[1]) >= CLIENTS * 5
    for c in clients:
        c.http.close()


def test_one_process_killed_the_other_serves(two_webs):
    api = Api(two_webs.url, two_webs.token("webs"))
    sid = api.create_session()["id"]
    api.http.close()
    two_webs.stop_process("web", signal.SIGKILL)
    try:
        for i in range(10):  # a new connection each time: the port's one listener left takes them all
            fresh = Api(two_webs.url, api.token)
            assert fresh.run(sid, f"echo alone-{i}", wait=30)["output"].strip() == f"alone-{i}"
            fresh.http.close()
    finally:
        two_webs.start_process(two_webs.spec("web"))
