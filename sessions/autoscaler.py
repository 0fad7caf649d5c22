"""The pool's autoscaler: load in, a decision out (scale_up / scale_down / maintain).

``decide`` is pure: a sample of the pool, the history of earlier decisions and a policy give a
decision and the new history. Hysteresis, so that it does not flap:
- a dead band: it scales up above ``high_load`` and down below ``low_load``, never in between;
- confirmation: the condition must hold for ``up_after`` / ``down_after`` evaluations in a row;
- cooldowns after a change (half of ``cooldown`` before another scale-up, all of it before a
  scale-down), and scale-down one backend at a time, only when the load after it stays at or
  under ``target_load``;
- while backends it asked for are still starting, it waits rather than asks again.

``autoscale_run`` (the beat task's body) samples the pool, decides, and stores the decision and
the desired backend count in Redis, where the executors (the local scaler of `make run`, KEDA or
an HPA on ``vterm_pool_desired_backends``) pick it up.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from django.conf import settings

from . import metrics
from .redis_state import pool_autoscaler_state_key, pool_decision_key, sync_client

ERROR_STATUSES = ("interrupted", "timed_out")


@dataclass(frozen=True)
class Policy:
    min_backends: int = 2
    max_backends: int = 8
    high_load: float = 0.75
    low_load: float = 0.30
    target_load: float = 0.60
    latency_p99: float = 0.05
    error_rate: float = 0.05
    up_after: int = 2
    down_after: int = 4
    cooldown: float = 60.0

    @classmethod
    def from_settings(cls) -> Policy:
        v = settings.VTERM
        return cls(min_backends=v["POOL_MIN_BACKENDS"], max_backends=v["POOL_MAX_BACKENDS"],
                   high_load=v["AUTOSCALE_HIGH_LOAD"], low_load=v["AUTOSCALE_LOW_LOAD"],
                   target_load=v["AUTOSCALE_TARGET_LOAD"], latency_p99=v["AUTOSCALE_LATENCY_P99"],
                   error_rate=v["AUTOSCALE_ERROR_RATE"], up_after=v["AUTOSCALE_UP_AFTER"],
                   down_after=v["AUTOSCALE_DOWN_AFTER"], cooldown=v["AUTOSCALE_COOLDOWN"])


@dataclass(frozen=True)
class Sample:
    at: float  # seconds (epoch)
    active_backends: int
    capacity_per_backend: int
    sessions: int
    latency_p99: float | None = None  # over the window since the last evaluation; None: no commands
    error_rate: float | None = None
    commands: int = 0
    memory_usage: float = 0.0
    cpu_usage: float = 0.0
    dead_backends: int = 0

    @property
    def load(self) -> float:
        cap = self.active_backends * self.capacity_per_backend
        return self.sessions / cap if cap else (math.inf if self.sessions else 0.0)


@dataclass
class History:
    desired: int | None = None
    high_streak: int = 0
    low_streak: int = 0
    last_change_at: float | None = None


@dataclass
class Decision:
    action: str
    target_backends: int
    target_capacity: int
    reason: str
    confidence: float
    recommendations: list[str] = field(default_factory=list)
    load: float = 0.0


def _clamp(n: int, policy: Policy) -> int:
    return max(policy.min_backends, min(policy.max_backends, n))


def _recommendations(s: Sample, p: Policy, desired: int) -> list[str]:
    out = []
    if s.load >= p.high_load and desired >= p.max_backends:
        out.append(f"the pool is at its maximum of {p.max_backends} backends and {s.load:.0%} loaded: "
                   "raise VTERM_POOL_MAX_BACKENDS or the capacity per backend")
    if s.memory_usage >= 0.8:
        out.append(f"backends use {s.memory_usage:.0%} of their memory on average: add backends or lower "
                   "VTERM_BACKEND_CAPACITY")
    if s.cpu_usage >= 0.8:
        out.append(f"backends use {s.cpu_usage:.0%} of their CPU on average")
    if s.latency_p99 is not None and s.latency_p99 > p.latency_p99 and s.load < p.low_load:
        out.append(f"command latency p99 {s.latency_p99 * 1000:.0f} ms with a lightly loaded pool: "
                   "look at Redis, the database and the web nodes rather than backends")
    if s.error_rate is not None and s.error_rate > p.error_rate:
        out.append(f"{s.error_rate:.0%} of commands were interrupted or timed out: check the backends' logs")
    if s.dead_backends:
        out.append(f"{s.dead_backends} backend(s) are dead: their sessions are being rebuilt elsewhere")
    return out


def decide(s: Sample, h: History, p: Policy) -> tuple[Decision, History]:
    """One evaluation. Pure: the same inputs give the same decision."""
    desired = _clamp(h.desired if h.desired is not None else s.active_backends, p)
    h = History(desired=desired, high_streak=h.high_streak, low_streak=h.low_streak, last_change_at=h.last_change_at)
    load = s.load
    per = max(s.capacity_per_backend, 1)
    needed = _clamp(math.ceil(s.sessions / (per * p.target_load)), p)
    since_change = math.inf if h.last_change_at is None else s.at - h.last_change_at
    slow = s.latency_p99 is not None and s.latency_p99 > p.latency_p99
    failing = s.error_rate is not None and s.error_rate > p.error_rate
    pressure = []
    if load >= p.high_load:
        pressure.append(f"load {load:.0%} ≥ {p.high_load:.0%}")
    if slow and load >= p.low_load:
        pressure.append(f"p99 latency {s.latency_p99 * 1000:.0f} ms > {p.latency_p99 * 1000:.0f} ms")
    if failing and load >= p.low_load:
        pressure.append(f"error rate {s.error_rate:.0%} > {p.error_rate:.0%}")

    def result(action: str, target: int, reason: str, confidence: float) -> tuple[Decision, History]:
        if target != h.desired:
            h.last_change_at = s.at
            h.high_streak = h.low_streak = 0
        h.desired = target
        rec = _recommendations(s, p, target)
        return Decision(action=action, target_backends=target, target_capacity=target * per, reason=reason,
                        confidence=round(max(0.0, min(1.0, confidence)), 2), recommendations=rec,
                        load=round(load, 4) if math.isfinite(load) else 1.0), h

    if pressure:
        h.high_streak, h.low_streak = h.high_streak + 1, 0
        why = ", ".join(pressure)
        if desired > s.active_backends:
            return result("maintain", desired, f"{why}; waiting for {desired - s.active_backends} "
                          "backend(s) to start", 0.6)
        if desired >= p.max_backends:
            return result("maintain", desired, f"{why}; already at the maximum of {p.max_backends}", 0.9)
        if h.high_streak < p.up_after:
            return result("maintain", desired, f"{why}; confirming ({h.high_streak}/{p.up_after})", 0.4)
        if since_change < p.cooldown / 2:
            return result("maintain", desired, f"{why}; cooling down after the last change", 0.5)
        target = _clamp(max(needed, desired + 1), p)
        margin = (load - p.high_load) / max(1 - p.high_load, 0.01) if math.isfinite(load) else 1.0
        return result("scale_up", target, f"{why} for {h.high_streak} evaluations: {desired} → {target} "
                      f"backends for a load near {p.target_load:.0%}", 0.6 + 0.4 * min(max(margin, 0), 1))

    if load < p.low_load and not slow and not failing:
        h.low_streak, h.high_streak = h.low_streak + 1, 0
        why = f"load {load:.0%} < {p.low_load:.0%}"
        if desired <= p.min_backends:
            return result("maintain", desired, f"{why}; at the minimum of {p.min_backends}", 0.9)
        if desired > s.active_backends and since_change < p.cooldown:
            return result("maintain", desired, f"{why}; waiting for {desired - s.active_backends} "
                          "backend(s) to start", 0.5)
        if desired > s.active_backends:
            # Asked for backends that never came; ask for what there is instead.
            return result("scale_down", _clamp(s.active_backends, p), f"{why}; backends asked for did not start",
                          0.6)
        if h.low_streak < p.down_after:
            return result("maintain", desired, f"{why}; confirming ({h.low_streak}/{p.down_after})", 0.4)
        if since_change < p.cooldown:
            return result("maintain", desired, f"{why}; cooling down after the last change", 0.5)
        target = desired - 1
        after = s.sessions / (target * per)
        if after > p.target_load:
            return result("maintain", desired, f"{why}, but {target} backends would be {after:.0%} loaded", 0.6)
        return result("scale_down", target, f"{why} for {h.low_streak} evaluations: drain one backend, "
                      f"{desired} → {target} (load then {after:.0%})", 0.6 + 0.4 * (p.low_load - load) / p.low_load)

    h.high_streak = h.low_streak = 0
    if load < p.low_load:
        # Slow or failing with little load: backends are not the cause, but don't shrink meanwhile.
        trouble = (f"p99 latency {s.latency_p99 * 1000:.0f} ms" if slow else f"error rate {s.error_rate:.0%}")
        return result("maintain", desired, f"load {load:.0%} < {p.low_load:.0%} but {trouble}: "
                      "not scaling down", 0.5)
    band = (p.high_load - p.low_load) / 2
    room = min(p.high_load - load, load - p.low_load) if math.isfinite(load) else 0
    return result("maintain", desired, f"load {load:.0%} within {p.low_load:.0%}–{p.high_load:.0%}",
                  0.5 + 0.5 * min(max(room, 0) / band, 1) if band > 0 else 0.5)


# -- the beat task's body: sample, decide, store ---------------------------------------------


def _window(events: dict, previous: dict | None) -> tuple[dict, dict]:
    """Command count, error rate and p99 latency since the last evaluation (counter deltas)."""
    now_counts = {status: v for (name, labels, _), v in events.items() if name == metrics.COMMANDS
                  for status in labels}
    buckets, _ = metrics.histogram_buckets(events, metrics.COMMAND_LATENCY)
    snapshot = {"commands": now_counts, "latency": buckets}
    prev = previous or {}
    prev_counts = prev.get("commands", {})
    delta = {k: v - prev_counts.get(k, 0) for k, v in now_counts.items()}
    total = sum(max(v, 0) for v in delta.values())
    errors = sum(max(delta.get(k, 0), 0) for k in ERROR_STATUSES)
    prev_buckets = dict(prev.get("latency", []))
    window_buckets = [(le, max(c - prev_buckets.get(le, 0), 0)) for le, c in buckets]
    p99 = metrics.histogram_quantile(0.99, window_buckets)
    return snapshot, {"commands": int(total), "error_rate": round(errors / total, 4) if total else 0.0,
                      "latency_p99": round(p99, 5) if p99 is not None else None}


def autoscale_run(now: float | None = None) -> dict | None:
    """Evaluate the pool once and publish the decision. None when another evaluation holds the lock."""
    from .pool import BackendPool, pool_state

    r = sync_client()
    lock_key = pool_autoscaler_state_key() + ":lock"
    if not r.set(lock_key, "1", nx=True, ex=max(5, int(settings.VTERM["AUTOSCALE_INTERVAL"]))):
        return None
    try:
        raw = r.get(pool_autoscaler_state_key())
        stored = json.loads(raw) if raw else {}
        history = History(**stored.get("history", {}))
        desired = BackendPool.desired_backends()
        if desired is not None:
            history.desired = desired  # an operator may have set it by hand
        state = pool_state()
        snapshot, window = _window(metrics.read_events(), stored.get("snapshot"))
        per = round(state.capacity / state.active_backends) if state.active_backends else (
            settings.VTERM["BACKEND_CAPACITY"])
        sample = Sample(at=now if now is not None else time.time(), active_backends=state.active_backends,
                        capacity_per_backend=per, sessions=state.total_sessions, latency_p99=window["latency_p99"],
                        error_rate=window["error_rate"] if window["commands"] else None,
                        commands=window["commands"], memory_usage=state.memory_usage, cpu_usage=state.cpu_usage,
                        dead_backends=sum(1 for b in state.backends if b.status == "dead"))
        policy = Policy.from_settings()
        decision, history = decide(sample, history, policy)
        record = {**asdict(decision), "decided_at": datetime.now(UTC).isoformat(),
                  "active_backends": state.active_backends, "sessions": state.total_sessions, "window": window}
        pipe = r.pipeline()
        pipe.set(pool_decision_key(), json.dumps(record))
        pipe.set(pool_autoscaler_state_key(), json.dumps({"history": asdict(history), "snapshot": snapshot}))
        pipe.execute()
        BackendPool.scale_to(decision.target_backends)
        return record
    finally:
        r.delete(lock_key)
