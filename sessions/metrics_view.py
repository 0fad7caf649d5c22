"""GET /metrics: Prometheus text, for scrapers only.

Prometheus scrapes without a user, so instead of a login this endpoint takes either
``Authorization: Bearer $VTERM_METRICS_TOKEN`` (when that is set) or a client address inside
VTERM_METRICS_ALLOW_NETWORKS (default: loopback and private networks, where Compose's and the
cluster's Prometheus live). The public load balancer refuses /metrics anyway (haproxy.cfg).
"""

from __future__ import annotations

import hmac
import ipaddress
import os

import prometheus_client
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import multiprocess

from .metrics import collector


def _networks() -> list[ipaddress._BaseNetwork]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.VTERM["METRICS_ALLOW_NETWORKS"]]


def metrics_allowed(request: HttpRequest) -> bool:
    token = settings.VTERM["METRICS_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "")
        if given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True
    try:
        addr = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in _networks())


def metrics(request: HttpRequest) -> HttpResponse:
    if not metrics_allowed(request):
        return JsonResponse({"detail": "Metrics are for the monitoring network or a bearer token "
                                       "(VTERM_METRICS_TOKEN)."}, status=403)
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        # Several processes behind one port: their files, plus our scrape-time series once.
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(collector())
    else:
        collector()  # registered on the default registry once
        registry = prometheus_client.REGISTRY
    return HttpResponse(prometheus_client.generate_latest(registry), content_type=prometheus_client.CONTENT_TYPE_LATEST)
