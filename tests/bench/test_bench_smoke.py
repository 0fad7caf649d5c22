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
