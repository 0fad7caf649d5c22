"""vterm's own Prometheus series, and the helpers other code calls to feed them.

Two kinds, so that the numbers are right however many web and worker processes there are:

- Pool-wide series, the same on every web node. Events (commands, output bytes, session drops,
  session creation time) happen in backend workers or web nodes, none of which is scraped alone,
  so whoever sees one adds it to counters in one Redis hash (in the caller's pipeline when it has
  one). State (sessions, backends, pool, autoscaler) is read from the database and Redis at scrape
  time. ``VtermCollector`` exports both. Several web nodes answer the same; query with max/avg
  over ``instance``, not sum.
  The stores' sizes (database, Redis memory) are read at scrape time too (storage_metrics.py).
- Per-process series: this web process's WebSocket connections (plain prometheus_client objects,
  like django-prometheus's HTTP series; every Daphne is its own scrape target).
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Time from a command's submission to its result, less the time the shell spent running it: what
# vterm itself adds (the alert VtermCommandLatencyHigh is on its p99 > 50 ms).
COMMAND_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SESSION_CREATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)

COMMAND_LATENCY = "vterm_command_latency_seconds"
SESSION_CREATE = "vterm_session_create_seconds"
COMMANDS = "vterm_commands_total"
OUTPUT_BYTES = "vterm_output_bytes_total"
SESSION_DROPS = "vterm_session_drops_total"
SANDBOX_LIMIT_EVENTS = "vterm_sandbox_limit_events_total"
RETENTION_DELETED = "vterm_retention_deleted_total"
RETENTION_KINDS = ("sessions", "commands", "session_events", "audit_events")

_HISTOGRAMS = {
    COMMAND_LATENCY: (COMMAND_LATENCY_BUCKETS, [],
                      "Time vterm adds to a command: from submission to result, less its run time in the shell."),
    SESSION_CREATE: (SESSION_CREATE_BUCKETS, [], "Time to create a session, up to its shell being ready."),
}
_COUNTERS = {
    COMMANDS: (["status"], "Commands that ended, by final status."),
    OUTPUT_BYTES: (["backend"], "Terminal output bytes read from shells, by backend."),
    SESSION_DROPS: (["backend"], "Sessions dropped: lost with their backend or by an error."),
    SANDBOX_LIMIT_EVENTS: (["kind", "backend"], "Sandbox limits hit: a process killed at the memory limit "
                           + "(kind=memory), a fork refused at the process limit (kind=processes)."),
    RETENTION_DELETED: (["kind"], "Rows the retention purge deleted, by kind (sessions/retention.py)."),
}

# Per process: every Daphne is its own scrape target.
# livesum: in multiprocess mode, the sum over the processes alive.
WEBSOCKET_CONNECTIONS = Gauge("vterm_websocket_connections", "Open WebSocket connections of this web process.",
                              multiprocess_mode="livesum")
WEBSOCKET_CONNECTIONS_OPENED = Counter("vterm_websocket_connections_opened",
                                       "WebSocket connections accepted by this web process.")


def websocket_opened() -> None:
    WEBSOCKET_CONNECTIONS.inc()
    WEBSOCKET_CONNECTIONS_OPENED.inc()


def websocket_closed() -> None:
    WEBSOCKET_CONNECTIONS.dec()


# -- recording pool-wide events into Redis ---------------------------------------------------


def metrics_key() -> str:
    return settings.VTERM["REDIS_PREFIX"] + "vterm:metrics"


def _field(name: str, labels: Iterable[str], part: str = "") -> str:
    return json.dumps([name, list(labels), part])


def _bucket(buckets: tuple[float, ...], value: float) -> str:
    for le in buckets:
        if value <= le:
            return repr(le)
    return "+Inf"


def _run(pipe, fill) -> None:
    """Add to the caller's pipeline, or send on our own; a metric must never fail the work."""
    if pipe is not None:
        fill(pipe)
        return
    try:
        from .redis_state import sync_client

        own = sync_client().pipeline(transaction=False)
        fill(own)
        own.execute()
    except Exception:
        log.warning("could not record a metric", exc_info=True)


def observe(name: str, value: float, labels: Iterable[str] = (), pipe=None) -> None:
    """One observation of a pool-wide histogram (buckets kept non-cumulative, summed at scrape)."""
    buckets = _HISTOGRAMS[name][0]
    labels = list(labels)
    key = metrics_key()

    def fill(p) -> None:
        p.hincrby(key, _field(name, labels, _bucket(buckets, value)), 1)
        p.hincrbyfloat(key, _field(name, labels, "sum"), value)
    _run(pipe, fill)


def count(name: str, labels: Iterable[str] = (), amount: float = 1, pipe=None) -> None:
    key = metrics_key()
    field = _field(name, labels)
    _run(pipe, lambda p: p.hincrbyfloat(key, field, amount))


def record_command_finished(*, status: str, latency_s: float | None, pipe=None) -> None:
    def fill(p) -> None:
        count(COMMANDS, [status], pipe=p)
        if latency_s is not None:
            observe(COMMAND_LATENCY, max(latency_s, 0.0), pipe=p)
    _run(pipe, fill)


def record_session_created(seconds: float) -> None:
    observe(SESSION_CREATE, seconds)


def record_output_bytes(backend: str, n: int, pipe=None) -> None:
    count(OUTPUT_BYTES, [backend], n, pipe=pipe)


def record_session_drop(backend: str | None) -> None:
    count(SESSION_DROPS, [backend or ""])


def read_events() -> dict[tuple[str, tuple[str, ...], str], float]:
    """Every pool-wide event counter, keyed (name, label values, part)."""
    from .redis_state import sync_client

    out = {}
    for field, value in sync_client().hgetall(metrics_key()).items():
        try:
            name, labels, part = json.loads(field)
        except ValueError:
            continue
        out[(name, tuple(labels), part)] = float(value)
    return out


def histogram_buckets(events: dict, name: str, labels: tuple[str, ...] = ()) -> tuple[list[tuple[str, float]], float]:
    """Cumulative (le, count) pairs ending with +Inf, and the sum, of one pool-wide histogram."""
    buckets = _HISTOGRAMS[name][0]
    running, out = 0.0, []
    for le in [repr(b) for b in buckets] + ["+Inf"]:
        running += events.get((name, labels, le), 0.0)
        out.append((le, running))
    return out, events.get((name, labels, "sum"), 0.0)


def histogram_quantile(q: float, buckets: list[tuple[str, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets (linear within a bucket)."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, cum in buckets:
        upper = math.inf if le == "+Inf" else float(le)
        if cum >= rank:
            if upper == math.inf:
                return prev_le
            width = cum - prev_count
            return prev_le + (upper - prev_le) * ((rank - prev_count) / width if width else 1.0)
        prev_le, prev_count = upper, cum
    return prev_le


# -- scrape-time collector -------------------------------------------------------------------


class VtermCollector(Collector):
    """Pool-wide series: events from Redis counters, state from the database and Redis."""

    def collect(self):
        try:
            events = read_events()
        except Exception:
            log.warning("metrics: Redis unavailable", exc_info=True)
            events = {}
        yield from self._events(events)
        from .resource_usage import session_resource_families

        yield from session_resource_families()
        from .storage_metrics import storage_families

        yield from storage_families()
        try:
            from .pool import pool_state

            state = pool_state()
        except Exception:
            log.warning("metrics: pool state unavailable", exc_info=True)
            return
        yield from self._state(state)

    def describe(self):
        return []  # computed at scrape time; don't let registration call collect()

    @staticmethod
    def _events(events: dict) -> Iterable[Any]:
        for name, (buckets, labelnames, doc) in _HISTOGRAMS.items():
            fam = HistogramMetricFamily(name, doc, labels=labelnames)
            for labels in sorted({k[1] for k in events if k[0] == name}) or [()]:
                cum, total = histogram_buckets(events, name, labels)
                fam.add_metric(list(labels), cum, total)
            yield fam
        for name, (labelnames, doc) in _COUNTERS.items():
            fam = CounterMetricFamily(name.removesuffix("_total"), doc, labels=labelnames)
            for (n, labels, _), value in sorted(events.items()):
                if n == name:
                    fam.add_metric(list(labels), value)
            yield fam

    @staticmethod
    def _state(state) -> Iterable[Any]:
        sessions = GaugeMetricFamily("vterm_sessions", "Sessions that are not over, by status and backend.",
                                     labels=["status", "backend"])
        for (status, backend), n in sorted(state.sessions_by_status_backend.items()):
            sessions.add_metric([status, backend], n)
        yield sessions

        by_status: dict[str, int] = defaultdict(int)
        for b in state.backends:
            by_status[b.status] += 1
        backends = GaugeMetricFamily("vterm_backends", "Backends by status.", labels=["status"])
        for status in ("healthy", "draining", "dead"):
            backends.add_metric([status], by_status.get(status, 0))
        yield backends

        per_backend = {
            "vterm_backend_heartbeat_age_seconds": ("Seconds since the backend's last heartbeat.",
                                                    lambda b: b.heartbeat_age),
            "vterm_backend_capacity": ("Sessions the backend may hold.", lambda b: b.capacity),
            "vterm_backend_sessions": ("Live sessions on the backend.", lambda b: b.sessions),
            "vterm_backend_memory_ratio": ("Share of its memory (cgroup limit, else the host's) in use.",
                                           lambda b: b.memory_ratio),
            "vterm_backend_memory_bytes": ("Resident memory of the worker, its tmux server and shells.",
                                           lambda b: b.memory_bytes),
            "vterm_backend_cpu_ratio": ("CPU used by the worker, tmux and shells, as a share of the host's.",
                                        lambda b: b.cpu_ratio),
            "vterm_backend_processes": ("Processes of the worker, tmux and shells.", lambda b: b.processes),
        }
        for name, (doc, get) in per_backend.items():
            fam = GaugeMetricFamily(name, doc, labels=["backend"])
            for b in state.backends:
                value = get(b)
                if value is not None:
                    fam.add_metric([b.id], value)
            yield fam

        pool = {
            "vterm_pool_capacity": ("Sessions the healthy backends may hold together.", state.capacity),
            "vterm_pool_active_backends": ("Healthy backends with a fresh heartbeat.", state.active_backends),
            "vterm_pool_available_slots": ("Sessions that may still be placed.", state.available_slots),
            "vterm_pool_load_ratio": ("Live sessions on healthy backends over their capacity.", state.average_load),
        }
        for name, (doc, value) in pool.items():
            yield GaugeMetricFamily(name, doc, value=value)

        decision = state.decision or {}
        yield GaugeMetricFamily("vterm_pool_desired_backends",
                                "Backends the autoscaler wants (KEDA/HPA follow this).",
                                value=decision.get("target_backends", state.active_backends))
        action = GaugeMetricFamily("vterm_autoscaler_decision", "The autoscaler's last decision (1 = current).",
                                   labels=["action"])
        for name in ("scale_up", "scale_down", "maintain"):
            action.add_metric([name], 1 if decision.get("action") == name else 0)
        yield action
        yield GaugeMetricFamily("vterm_autoscaler_confidence", "Confidence of the autoscaler's last decision.",
                                value=decision.get("confidence", 0))
        yield GaugeMetricFamily("vterm_autoscaler_target_capacity",
                                "Sessions the pool would hold at the autoscaler's target.",
                                value=decision.get("target_capacity", state.capacity))


_registered = threading.Lock()
_collector: VtermCollector | None = None


def register_collector() -> None:
    """Add the pool-wide series to prometheus_client's default registry (once per process)."""
    global _collector
    with _registered:
        if _collector is None:
            _collector = VtermCollector()
            REGISTRY.register(_collector)


def collector() -> VtermCollector:
    register_collector()
    assert _collector is not None
    return _collector
