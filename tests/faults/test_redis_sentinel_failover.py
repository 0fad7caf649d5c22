"""The stack on Redis Sentinel: the primary is killed under load, a replica is promoted, and every
process (web, backend workers, the control worker with beat) follows it without a restart.

Nothing accepted is lost: every command answered 201 reaches a final state (docs/failover.md,
"What a 201 means"). Requests made while there is no primary are refused with 503, never 500.
Times are reported (tests/faults/sentinel_failover.py prints the table), not asserted.
"""

from __future__ import annotations

import pytest

from tests.redis_sentinel import SentinelSet

from .harness import FaultStack
from .sentinel_failover import DEFAULTS, handoffs_lost_with_the_primary, primary_killed_under_load, table

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def sentinels():
    with SentinelSet() as s:
        yield s


@pytest.fixture(scope="module")
def fs(sentinels, tmp_path_factory):
    env = {**DEFAULTS, **{k: v for k, v in sentinels.env().items() if k != "REDIS_URL"}}
    with FaultStack(sentinels.url, tmp_path_factory.mktemp("faults-sentinel"), prefix="fsn", **env) as st:
        yield st


def test_primary_killed_under_load(fs, sentinels):
    out = primary_killed_under_load(fs, sentinels)
    print("\n" + table([out]))
    assert out.accepted > 0
    assert not out.other, [(a.status, a.command) for a in out.other]  # 201 or 503, nothing else
    assert not out.lost, out.lost
    assert all(c["status"] in ("succeeded", "interrupted") for c in out.ended), out.by_status()
    for c in out.ended:
        if c["status"] == "interrupted":
            assert c["reason"], c
    # Every session works again, and a new one starts (a Celery task to a backend through the broker).
    assert [c["status"] for c in out.after] == ["succeeded"] * len(out.after), out.after
    assert out.new_session["command"]["status"] == "succeeded", out.new_session
    assert out.new_session["command"]["output"] == "new-session\n"
    # No process had to be restarted to follow the new primary.
    assert all(fs.processes_alive().values()), fs.processes_alive()


def test_handoffs_lost_with_the_primary_still_run(fs, sentinels):
    """Writes the primary acknowledged and never replicated: the commands' inbox messages are gone
    after the failover, and the backends' hand-off check runs them from the database."""
    out = handoffs_lost_with_the_primary(fs, sentinels)
    assert all(out["acked"]), "each command was accepted (201) before the primary died"
    assert out["inbox_after_failover"] == 0, "the promoted replica never had the hand-offs"
    assert [c["status"] for c in out["ended"]] == ["succeeded"] * len(out["ended"]), out["ended"]
    assert [c["output"] for c in out["ended"]] == [f"handed-off-{i}\n" for i in range(len(out["ended"]))]
    assert all(c["cwd"] == "/tmp" for c in out["ended"]), "they ran in their session's shell"
    starts = [c["started_at"] for c in out["ended"]]
    assert starts == sorted(starts), "in the order they were accepted"
    assert out["after"]["status"] == "succeeded"
