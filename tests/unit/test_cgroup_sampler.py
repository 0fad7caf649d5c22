"""The sandboxed sessions' sampler (workers/resource_usage.py CgroupSampler), on a sandbox whose
counters the test sets (the real cgroups: tests/integration/test_resource_usage.py).

- Limit events are counted once: a worker that restarts and adopts its shells takes the events they
  already had as its baseline, while a shell started later counts from zero (against a real Redis).
- A session none of whose processes ran since the last round keeps its figures without its files
  being read, until FULL_READ_EVERY; one that ran is read in full."""

from __future__ import annotations

import uuid

import pytest

from sessions import metrics
from sessions.redis_state import sync_client
from workers import resource_usage
from workers.resource_usage import CgroupSampler
from workers.sandbox.cgroups import Usage


class _Boxes:
    """The sampler's view of a sandbox: each shell's cgroup counters, set by the test. Each change of
    them comes with CPU used (a process ran to hit a limit), as in a real cgroup."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[int, int]] = {}
        self.memory: dict[str, int] = {}
        self.full_reads = 0

    def cpu_seconds(self, name: str) -> float | None:
        if name not in self.counters:
            return None
        return float(sum(self.counters[name]) + self.memory.get(name, 1))

    def usage(self, name: str) -> Usage | None:
        self.full_reads += 1
        oom, forks = self.counters[name]
        return Usage(memory_bytes=self.memory.get(name, 1), cpu_seconds=self.cpu_seconds(name), processes=1,
                     oom_kills=oom, process_limit_hits=forks)

    def pids(self, name: str) -> list[int]:
        return []


@pytest.fixture
def events(redis_url, settings):
    settings.REDIS_URL = redis_url
    settings.VTERM = {**settings.VTERM, "REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}:"}
    sync_client.cache_clear()

    def read(kind: str) -> float:
        return metrics.read_events().get((metrics.SANDBOX_LIMIT_EVENTS, (kind, "b1"), ""), 0)
    yield read
    sync_client().delete(metrics.metrics_key())
    sync_client.cache_clear()


def test_adopted_shells_past_events_are_not_counted_again(events):
    boxes = _Boxes()
    boxes.counters = {"adopted": (3, 7)}  # what the shell hit under the worker before its restart
    sampler = CgroupSampler(boxes, "b1")
    sampler.sample(["adopted"])
    assert (events("memory"), events("processes")) == (0, 0)

    boxes.counters = {"adopted": (4, 7), "new": (1, 2)}  # one more OOM kill; a new shell's first events
    sampler.sample(["adopted", "new"])
    assert (events("memory"), events("processes")) == (2, 2)

    sampler.sample(["adopted", "new"])  # nothing new
    assert (events("memory"), events("processes")) == (2, 2)


def test_a_session_that_did_not_run_is_not_read_again_until_due(monkeypatch):
    boxes = _Boxes()
    boxes.counters = {"idle": (0, 0), "busy": (0, 0)}
    sampler = CgroupSampler(boxes, "b1")
    first = sampler.sample(["idle", "busy"])
    assert boxes.full_reads == 2

    boxes.memory["busy"] = 5  # "busy" ran (its CPU moved) and grew; "idle" did nothing
    second = sampler.sample(["idle", "busy"])
    assert boxes.full_reads == 3  # "busy" only
    assert second["busy"]["memory_bytes"] == 5
    assert second["idle"]["memory_bytes"] == first["idle"]["memory_bytes"]
    assert second["idle"]["cpu_percent"] == 0.0
    assert second["idle"]["sampled_at"] >= first["idle"]["sampled_at"]

    del boxes.counters["busy"]  # gone: no figures, no error
    assert set(sampler.sample(["idle", "busy"])) == {"idle"}
    assert boxes.full_reads == 3

    monkeypatch.setattr(resource_usage, "FULL_READ_EVERY", 0.0)  # due: read in full however idle
    sampler.sample(["idle"])
    assert boxes.full_reads == 4
