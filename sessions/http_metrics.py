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
    m, view, code = Metrics.get_instance(), _view_name(), str(status)
    # PrometheusBeforeMiddleware
    m.requests_total.inc()
    m.responses_total.inc()
    m.requests_latency_before.observe(seconds)
    # PrometheusAfterMiddleware
    m.requests_by_method.labels(method=METHOD).inc()
    m.requests_by_transport.labels(transport=transport).inc()
    m.requests_body_bytes.observe(request_bytes)
    m.requests_by_view_transport_method.labels(view=view, transport=transport, method=METHOD).inc()
    m.responses_by_status.labels(status=code).inc()
    m.responses_by_status_view_method.labels(status=code, view=view, method=METHOD).inc()
    m.responses_by_charset.labels(charset="utf-8").inc()
    m.responses_body_bytes.observe(response_bytes)
    m.requests_latency_by_view_method.labels(view=view, method=METHOD).observe(seconds)
