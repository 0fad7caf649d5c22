"""The backend pool (DESIGN: BackendPool): capacity, active backends, slots, load, scaling target.

A slot is a live session row on a backend, so the database is the only ledger: acquiring a slot
is placing a session (``backend_pick_least_loaded``), releasing it is the session leaving the live
statuses, and a crashed process cannot leak one. Per-backend
memory and CPU come from the backend's heartbeat (workers/backend_stats.py, a Redis hash).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from .api_errors import ServiceUnavailable
from .circuit import breaker_open_ids
from .models import Backend, TerminalSession
from .redis_state import (
    backend_inbox_key,
    backend_stats_key,
    pool_decision_key,
    pool_desired_key,
    sync_client,
)

# Statuses a session has while it is not over (exported by vterm_sessions; terminated and lost
# sessions are history, counted by their events, not scanned on every scrape).
NOT_OVER = (*TerminalSession.LIVE, TerminalSession.Status.TERMINATING)


def backends_alive_cutoff():
    return timezone.now() - timedelta(seconds=settings.VTERM["HEARTBEAT_TTL"])


def backend_pick_least_loaded(*, exclude: tuple[str, ...] = ()) -> Backend | None:
    """The healthy backend with the most room, or None when all are full or gone."""
    candidates = (
        Backend.objects.filter(status=Backend.Status.HEALTHY, last_heartbeat__gte=backends_alive_cutoff())
        .exclude(id__in=exclude)
        .annotate(load=Count("sessions", filter=Q(sessions__status__in=TerminalSession.LIVE)))
    )
    room = [b for b in candidates if b.load < b.capacity]
    cooling = breaker_open_ids([b.id for b in room])
    room = [b for b in room if b.id not in cooling]
    if not room:
        return None
    return min(room, key=lambda b: (b.load / max(b.capacity, 1), b.load, b.id))


@dataclass
class BackendInfo:
    id: str
    hostname: str
    queue: str
    status: str  # healthy | draining | dead: "dead" also when a healthy one's heartbeat is stale
    capacity: int
    sessions: int
    last_heartbeat: str | None
    heartbeat_age: float | None
    memory_bytes: float | None = None
    memory_ratio: float | None = None
    cpu_ratio: float | None = None
    processes: float | None = None
    sandbox: str = ""  # how its shells are isolated: "off" or the sandbox's description

    @property
    def active(self) -> bool:
        return self.status == Backend.Status.HEALTHY


@dataclass
class PoolState:
    backends: list[BackendInfo]
    sessions_by_status_backend: dict[tuple[str, str], int] = field(default_factory=dict)
    decision: dict | None = None

    @property
    def active(self) -> list[BackendInfo]:
        return [b for b in self.backends if b.active]

    @property
    def active_backends(self) -> int:
        return len(self.active)

    @property
    def capacity(self) -> int:
        return sum(b.capacity for b in self.active)

    @property
    def total_sessions(self) -> int:
        """Live sessions on any backend (those on a draining one are still being served)."""
        return sum(b.sessions for b in self.backends if b.status != Backend.Status.DEAD)

    @property
    def available_slots(self) -> int:
        return sum(max(b.capacity - b.sessions, 0) for b in self.active)

    @property
    def average_load(self) -> float:
        """Live sessions over the capacity of the healthy backends (1.0 = full)."""
        cap = self.capacity
        return round(self.total_sessions / cap, 4) if cap else (1.0 if self.total_sessions else 0.0)

    def _mean(self, attr: str) -> float:
        values = [getattr(b, attr) for b in self.active if getattr(b, attr) is not None]
        return round(sum(values) / len(values), 4) if values else 0.0

    @property
    def memory_usage(self) -> float:
        return self._mean("memory_ratio")

    @property
    def cpu_usage(self) -> float:
        return self._mean("cpu_ratio")


def _float(raw: dict, name: bytes) -> float | None:
    try:
        return float(raw[name])
    except (KeyError, ValueError):
        return None


def pool_state() -> PoolState:
    """Everything the pool endpoints, the metrics and the autoscaler read, in three queries."""
    now = timezone.now()
    ttl = settings.VTERM["HEARTBEAT_TTL"]
    rows = list(Backend.objects.annotate(
        load=Count("sessions", filter=Q(sessions__status__in=TerminalSession.LIVE))).order_by("id"))
    pipe = sync_client().pipeline(transaction=False)
    for b in rows:
        pipe.hgetall(backend_stats_key(b.id))
    pipe.get(pool_decision_key())
    *stats, decision_raw = pipe.execute()
    backends = []
    for b, raw in zip(rows, stats):
        age = (now - b.last_heartbeat).total_seconds() if b.last_heartbeat else None
        status = b.status
        if status == Backend.Status.HEALTHY and (age is None or age > ttl):
            status = Backend.Status.DEAD
        backends.append(BackendInfo(
            id=b.id, hostname=b.hostname, queue=b.queue, status=status, capacity=b.capacity, sessions=b.load,
            last_heartbeat=b.last_heartbeat.isoformat() if b.last_heartbeat else None,
            heartbeat_age=round(age, 3) if age is not None else None,
            memory_bytes=_float(raw, b"memory_bytes"), memory_ratio=_float(raw, b"memory_ratio"),
            cpu_ratio=_float(raw, b"cpu_ratio"), processes=_float(raw, b"processes"), sandbox=b.sandbox,
        ))
    by_sb = {
        (r["status"], r["backend_id"] or ""): r["n"]
        for r in TerminalSession.objects.filter(status__in=NOT_OVER).values("status", "backend_id")
        .annotate(n=Count("id")).order_by()
    }
    return PoolState(backends=backends, sessions_by_status_backend=by_sb,
                     decision=json.loads(decision_raw) if decision_raw else None)


class BackendPool:
    """The pool as one object (the design's BackendPool), over ``pool_state``."""

    def __init__(self, state: PoolState | None = None) -> None:
        self.state = state or pool_state()

    @property
    def capacity(self) -> int:
        return self.state.capacity

    @property
    def active_backends(self) -> int:
        return self.state.active_backends

    @property
    def available_slots(self) -> int:
        return self.state.available_slots

    @staticmethod
    def acquire(exclude: tuple[str, ...] = ()) -> Backend:
        """The backend a new (or moving) session goes to: the least loaded healthy one with room."""
        backend = backend_pick_least_loaded(exclude=exclude)
        if backend is None:
            raise ServiceUnavailable("No healthy backend has room for a new session.")
        return backend

    @staticmethod
    def scale_to(target_backends: int) -> int:
        """Ask the executors (local scaler, KEDA/HPA through the metric) for this many backends."""
        lo, hi = settings.VTERM["POOL_MIN_BACKENDS"], settings.VTERM["POOL_MAX_BACKENDS"]
        target = max(lo, min(hi, int(target_backends)))
        sync_client().set(pool_desired_key(), target)
        return target

    @staticmethod
    def desired_backends() -> int | None:
        raw = sync_client().get(pool_desired_key())
        return int(raw) if raw is not None else None

    def metrics(self) -> dict:
        s = self.state
        window = (s.decision or {}).get("window", {})
        return {"total_sessions": s.total_sessions, "average_load": s.average_load,
                "memory_usage": s.memory_usage, "cpu_usage": s.cpu_usage,
                "error_rate": window.get("error_rate", 0.0)}

    def scaling(self) -> dict:
        d = self.state.decision
        if not d:
            return {"action": "maintain", "target_capacity": self.capacity,
                    "target_backends": self.active_backends, "reason": "the autoscaler has not run yet",
                    "confidence": 0.0, "recommendations": [], "decided_at": None}
        keys = ("action", "target_capacity", "target_backends", "reason", "confidence", "recommendations",
                "decided_at")
        return {k: d.get(k) for k in keys}

    def as_dict(self) -> dict:
        """GET /api/v1/pool/ (API.md), with target_backends, recommendations and decided_at added."""
        return {"capacity": self.capacity, "active_backends": self.active_backends,
                "available_slots": self.available_slots, "metrics": self.metrics(), "scaling": self.scaling()}


def backend_as_dict(b: BackendInfo) -> dict:
    """GET /api/v1/backends/ (API.md), with heartbeat age and resource figures added."""
    d = asdict(b)
    return {k: d[k] for k in ("id", "hostname", "queue", "status", "capacity", "sessions", "last_heartbeat",
                              "heartbeat_age", "memory_bytes", "memory_ratio", "cpu_ratio", "processes",
                              "sandbox")}


def backend_retire(backend_id: str) -> bool:
    """Forget a backend that was drained and stopped on purpose (scale-down), so that it does not
    count as dead (VtermBackendDown). Refused while it still holds live sessions."""
    if TerminalSession.objects.filter(backend_id=backend_id, status__in=TerminalSession.LIVE).exists():
        return False
    Backend.objects.filter(pk=backend_id).delete()
    sync_client().delete(backend_stats_key(backend_id), backend_inbox_key(backend_id))
    return True
