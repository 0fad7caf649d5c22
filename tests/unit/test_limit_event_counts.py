"""Sandbox limit events are counted once: a worker that restarts and adopts its shells takes
the events they already had as its baseline, while a shell started later counts from zero
(workers/resource_usage.py CgroupSampler), against a real Redis."""

from __future__ import annotations

import uuid

import pytest

from sessions import metrics
from sessions.redis_state import sync_client
from workers.resource_usage import CgroupSampler
from workers.sandbox.cgroups import Usage


class _Boxes:
    """The sampler's view of a sandbox: each shell's cgroup counters, set by the test."""

    def __init__(self) -> None:
        self.counters: dict[str, tuple[int, int]] = {}

    def usage(self, name: str) -> Usage | None:
        oom, forks = self.counters[name]
        return Usage(memory_bytes=1, cpu_seconds=0.0, processes=1, oom_kills=oom, process_limit_hits=forks)

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
