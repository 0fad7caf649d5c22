"""Circuit breaker per backend: one that keeps failing gets no new placements for a cool-down.

Failures (a shell that would not start, a backend that did not answer) are counted in
Redis over a sliding window; at BREAKER_FAILURES the breaker opens for BREAKER_COOLDOWN
seconds (a key with a TTL, so every web node sees it and it closes by itself).
"""

from __future__ import annotations

import logging

from django.conf import settings

from .redis_state import breaker_failures_key, breaker_open_key, sync_client

log = logging.getLogger(__name__)


def breaker_record_failure(backend_id: str) -> bool:
    """Count one failure; True when this one opened the breaker."""
    cfg = settings.VTERM
    r = sync_client()
    key = breaker_failures_key(backend_id)
    pipe = r.pipeline()
    pipe.incr(key)
    pipe.expire(key, max(1, int(cfg["BREAKER_WINDOW"])))
    failures = pipe.execute()[0]
    if failures >= cfg["BREAKER_FAILURES"]:
        r.set(breaker_open_key(backend_id), failures, ex=max(1, int(cfg["BREAKER_COOLDOWN"])))
        r.delete(key)
        log.warning("backend %s: %d failures, no placements for %g s", backend_id, failures,
                    cfg["BREAKER_COOLDOWN"])
        return True
    return False


def breaker_record_success(backend_id: str) -> None:
    sync_client().delete(breaker_failures_key(backend_id))


def breaker_open_ids(backend_ids: list[str]) -> set[str]:
    """Which of these backends are cooling down."""
    if not backend_ids:
        return set()
    flags = sync_client().mget([breaker_open_key(b) for b in backend_ids])
    return {b for b, flag in zip(backend_ids, flags) if flag is not None}
