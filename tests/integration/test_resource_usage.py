"""Per-session resource usage: sampled by the backend, shown in the API, admin and /metrics."""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import admin_browser
from tests.prom import scrape, value
from vterm.client import Client

pytestmark = pytest.mark.integration

HOG_MB = 64


def _usage_when(vt: Client, sid: str, predicate, timeout: float = 40.0) -> dict:
    """The session's resource_usage once ``predicate`` holds (the backend samples every few seconds)."""
    end = time.monotonic() + timeout
    while True:
        usage = vt.get_session(sid).raw.get("resource_usage") or {}
        if (usage and predicate(usage)) or time.monotonic() > end:
            return usage
        time.sleep(0.5)


def test_a_sessions_process_tree_is_measured(stack, alice):
    with Client(stack.url, alice.token) as vt:
        hog = vt.create_session(name="hog")
        quiet = vt.create_session(name="quiet")
        try:
            # A child holding HOG_MB of touched memory, and one burning CPU.
            vt.run(hog, f"python3 -c 'x=bytearray({HOG_MB}<<20); import time; time.sleep(300)' & "
                        "(while :; do :; done) & true")
            usage = _usage_when(vt, hog.id, lambda u: u["processes"] >= 3 and u["memory_bytes"] > HOG_MB << 20
                                and u["cpu_percent"] > 1)
            assert usage["processes"] >= 3, usage
            assert usage["memory_bytes"] > HOG_MB << 20 and usage["pss_bytes"] > (HOG_MB - 8) << 20, usage
            # A busy loop, even on a crowded machine, uses more than 1% of a core.
            assert usage["cpu_percent"] > 1, usage
            assert usage["sampled_at"]
            small = _usage_when(vt, quiet.id, lambda u: True)
            # An idle sandboxed session: its shell and the sandbox's monitor (bwrap), read from its cgroup.
            assert small["processes"] == 2 and small["memory_bytes"] < HOG_MB << 20, small
            assert small["cpu_percent"] < usage["cpu_percent"]

            # The same figures on /metrics, per session.
            series = scrape(stack.url)
            assert value(series, "vterm_session_memory_bytes", session=hog.id) > HOG_MB << 20
            assert value(series, "vterm_session_processes", session=hog.id) >= 3
            assert any(labels.get("session") == quiet.id for labels, _ in series["vterm_session_pss_bytes"])

            # Admin lists them, and sorts by memory: the hog first when sorted descending.
            page = "/admin/vterm_sessions/terminalsession/"
            with admin_browser(stack, "usage-admin", page) as (browser, r):
                assert r.status_code == 200 and "Memory (PSS)" in r.text, r.text[:1000]
                # The memory column's sort link, as admin draws it in the column header.
                col = re.search(r'column-memory.*?href="\?o=(\d+)', r.text, re.DOTALL).group(1)
                r = browser.get(page, params={"o": f"-{col}", "status__exact": "active"})
                assert r.status_code == 200
                ids = re.findall(r'href="/admin/vterm_sessions/terminalsession/([0-9a-f-]{36})/change/', r.text)
                assert hog.id in ids and quiet.id in ids and ids.index(hog.id) < ids.index(quiet.id)
                r = browser.get(page, params={"o": f"{col}", "status__exact": "active"})
                ids = re.findall(r'href="/admin/vterm_sessions/terminalsession/([0-9a-f-]{36})/change/', r.text)
                assert ids.index(quiet.id) < ids.index(hog.id)

            # An idle session's figures are carried from round to round without reading its files
            # (nothing of it ran): still sampled, and the moment it runs something, read again.
            later = _usage_when(vt, quiet.id, lambda u: u["sampled_at"] > small["sampled_at"])
            assert later["sampled_at"] > small["sampled_at"] and later["processes"] == 2, (small, later)
            vt.run(quiet, f"python3 -c 'x=bytearray({HOG_MB}<<20); import time; time.sleep(300)' & true")
            grown = _usage_when(vt, quiet.id, lambda u: u["processes"] >= 3 and u["memory_bytes"] > HOG_MB << 20)
            assert grown["processes"] >= 3 and grown["memory_bytes"] > HOG_MB << 20, grown
        finally:
            vt.end_session(hog)
            vt.end_session(quiet)
