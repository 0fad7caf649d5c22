"""django-prometheus's HTTP series for the request served in front of Django (the hot route).

sessions/command_route.py answers `POST …/commands/` without Django's middleware, so
PrometheusBeforeMiddleware and PrometheusAfterMiddleware never see it: without this, the
busiest route would be missing from the request and response series operators graph.
These are the same counts and observations those middlewares make, on the same objects.
"""

from __future__ import annotations

import functools
import uuid

from django.urls import resolve
from django_prometheus.middleware import Metrics

METHOD = "POST"


@functools.cache
def _view_name() -> str:
    # The name Django's resolver gives the route, as the middleware labels it.
    return resolve(f"/api/v1/sessions/{uuid.UUID(int=0)}/commands/").view_name


def record_command_route(*, transport: str, status: int, request_bytes: int, response_bytes: int,
                         seconds: float) -> None:
    counters, request_size, response_size, latencies = _series(transport, str(status))
    for counter in counters:
        counter.inc()
    request_size.observe(request_bytes)
    response_size.observe(response_bytes)
    for histogram in latencies:
        histogram.observe(seconds)


@functools.cache
def _series(transport: str, status: str) -> tuple:
    """The series one answer adds to, labelled once per (transport, status): a label lookup is
    most of the cost, on every command."""
    m, view = Metrics.get_instance(), _view_name()
    counters = (
        # PrometheusBeforeMiddleware
        m.requests_total, m.responses_total,
        # PrometheusAfterMiddleware
        m.requests_by_method.labels(method=METHOD),
        m.requests_by_transport.labels(transport=transport),
        m.requests_by_view_transport_method.labels(view=view, transport=transport, method=METHOD),
        m.responses_by_status.labels(status=status),
        m.responses_by_status_view_method.labels(status=status, view=view, method=METHOD),
        m.responses_by_charset.labels(charset="utf-8"),
    )
    latencies = (m.requests_latency_before, m.requests_latency_by_view_method.labels(view=view, method=METHOD))
    return counters, m.requests_body_bytes, m.responses_body_bytes, latencies
