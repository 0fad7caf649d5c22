"""A short run of `manage.py vterm_bench` against the live test stack: it runs and reports.

No figure is asserted (a shared machine is noisy); only that commands ran over both
channels, the report has its parts, and the JSON and the histogram were written.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.integration


def test_bench_runs_and_reports(stack, tmp_path):
    out, err = io.StringIO(), io.StringIO()
    json_path, png = tmp_path / "bench.json", tmp_path / "bench.png"
    call_command("vterm_bench", "--url", stack.url, "--token", stack.token("bench-smoke"),
                 "--data-dir", str(stack.config.data_dir), "--sessions", "2", "--duration", "2",
                 "--rate", "2", "--floor-samples", "20", "--json", str(json_path), "--histogram", str(png),
                 stdout=out, stderr=err)
    table = out.getvalue()
    for part in ("sessions created", "floor (bare bash+tmux)", "p50/floor", "throughput", "errors",
                 "session drops", "memory (PSS)"):
        assert part in table, table
    result = json.loads(json_path.read_text())
    assert result["create"]["created"] == 2
    assert result["errors"] == {} and result["dropped"] == 0, table
    assert set(result["latency"]) == {"rest", "ws"}, table
    assert all(s["n"] > 0 and s["p50"] > 0 for s in result["latency"].values())
    assert result["floor"]["strict"]["n"] == 20 and result["floor"]["strict"]["p50"] > 0
    assert result["memory"]["groups_mb"]["shells"] > 0 and result["memory"]["groups_mb"]["tmux"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "load:" in err.getvalue()  # progress went to stderr


def test_bench_refuses_bad_options():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--token"):
        call_command("vterm_bench", "--url", "http://127.0.0.1:9")
    with pytest.raises(CommandError, match="--sessions"):
        call_command("vterm_bench", "--sessions", "0")


def test_tmux_servers_probe_runs(tmp_path):
    """tests/bench/tmux_servers.py (docs/bench.md, "Several tmux servers per backend"), small."""
    from tests.bench import tmux_servers
    out = tmp_path / "rows.json"
    assert tmux_servers.main(["--shells", "5", "--per-server", "0,2", "--commands", "10", "--idle", "0.2",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["shells"], r["per_server"], r["servers"]) for r in rows] == [(5, 0, 1), (5, 2, 3)]


def test_hop_profile_marks_every_hop(redis_url):
    """tests/bench/hop_profile.py (docs/bench.md, "Where the time goes, hop by hop"), small: each hop of
    the tables is marked by the process that passes it, inside the client's window."""
    from tests.bench import hop_profile
    cmd_rows, key_rows, create_rows = hop_profile.profile(redis_url, calls=8, keys=8, warmup=2, creates=8)
    for hops, rows in ((hop_profile.COMMAND_HOPS, cmd_rows), (hop_profile.KEY_HOPS, key_rows),
                       (hop_profile.CREATE_HOPS, create_rows)):
        assert len(rows) == 8
        for hop, ref, _ in hops:
            # A mark can fall outside its window only when the client's own wake-up came first.
            assert sum(hop in r for r in rows) >= 6, (hop, rows)
            assert all(r["client.send"] <= r[hop] <= r["client.recv"] for r in rows if hop in r)
        assert "the path, p50s summed" in hop_profile.table("t", hops, rows)


def test_hop_times_take_each_hops_first_mark_in_its_window():
    from tests.bench.hop_profile import hop_times
    marks = [(5, "web.recv"), (12, "web.recv"), (14, "worker.taken"), (15, "web.recv"), (31, "web.recv")]
    assert hop_times(marks, [(10, 20), (30, 40)]) == [
        {"client.send": 10, "client.recv": 20, "web.recv": 12, "worker.taken": 14},
        {"client.send": 30, "client.recv": 40, "web.recv": 31},
    ]


def test_pacer_model_gathers_under_load_and_holds_no_chunk_past_the_interval():
    from tests.bench.pacer_model import INTERVAL, SessionRule, simulate, thread_rule
    send_s = 0.0007
    idle, _ = simulate(thread_rule(), 20, 8, 500, send_s)
    busy, waits = simulate(thread_rule(), 400, 8, 2000, send_s)
    before, _ = simulate(SessionRule(), 400, 8, 2000, send_s)
    assert idle > 0.95, "seldom output: nearly every chunk at once, alone"
    assert busy < 0.6 * before, (busy, before)
    assert max(waits) <= INTERVAL + send_s + 1e-9


def test_idle_cpu_probe_reports_each_group(redis_url):
    """tests/bench/idle_cpu.py, small: the worker, the web, the tmux servers and the shells are found and measured."""
    from tests.bench import idle_cpu
    figures = idle_cpu.measure(redis_url, sessions=2, seconds=0.5, settle=0.5)
    assert set(figures) == {"web", "workers", "tmux", "shells"}, figures
    assert all(n >= 1 and percent >= 0 for percent, n in figures.values())
