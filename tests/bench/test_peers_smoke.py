"""A short run of the peer drivers (vterm_project/bench/peers.py) against the live test stack: vterm,
terminado and SWE-ReX each produce their figures. No figure is asserted (a shared machine is noisy)."""

from __future__ import annotations

import pytest

from vterm_project.bench.peers import PeerConfig, compare
from vterm_project.bench.report import render_peers

pytestmark = pytest.mark.integration


def test_peers_measure_every_figure(stack):
    said = []
    result = compare(stack.url, stack.token("bench-peers"), PeerConfig(calls=5, keys=5, mb=0.5), said.append)
    assert result["errors"] == {}, result["errors"]
    assert set(result["command"]) == {"vterm", "swe-rex"}
    assert set(result["echo"]) == set(result["output"]) == {"vterm", "terminado"}
    for figure in ("command", "echo"):
        for side in result[figure].values():
            assert side["n"] == 5 and side["p50"] > 0
    for side in result["output"].values():
        # The whole file came through (100-byte lines; vterm's tty writes each "\n" as "\r\n").
        assert side["mb"] >= 0.5 and side["mb_per_s"] > 0
    assert result["output"]["vterm"]["seq_breaks"] == 0
    table = render_peers(result)
    for part in ("`true` in a session", "keystroke echo", "cat to a viewer", "swe-rex", "terminado", "x "):
        assert part in table, table
    assert said == ["peers: vterm…", "peers: terminado…", "peers: SWE-ReX…"]


def test_peer_options_are_checked():
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--peer-mb"):
        call_command("vterm_bench", "--peers", "--peer-mb", "0")
