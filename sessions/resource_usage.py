"""Per-session resource usage as the rest of vterm reads it: admin ordering, display, Prometheus series.

The backends write it (workers/resource_usage.py) into TerminalSession.resource_usage:
``{"memory_bytes", "pss_bytes", "cpu_percent", "processes", "sampled_at"}``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db.models import BigIntegerField, FloatField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from prometheus_client.core import GaugeMetricFamily

from .models import TerminalSession

log = logging.getLogger(__name__)

_SERIES = (
    ("memory_bytes", "vterm_session_memory_bytes", "Resident memory (RSS) of a session's shell and its children."),
    ("pss_bytes", "vterm_session_pss_bytes",
     "Proportional memory (PSS) of a session's process tree: sums over sessions to what they cost."),
    ("cpu_percent", "vterm_session_cpu_percent", "CPU of a session's process tree, percent of one core."),
    ("processes", "vterm_session_processes", "Processes in a session's tree (the shell included)."),
    ("oom_kills", "vterm_session_oom_kills", "Processes of a session killed at its sandbox's memory limit."),
    ("process_limit_hits", "vterm_session_process_limit_hits",
     "Forks of a session refused at its sandbox's process limit."),
)


def usage_order(key: str, float_: bool = False):
    """One number in resource_usage as a sortable expression (admin's column ordering)."""
    return Cast(KT(f"resource_usage__{key}"), FloatField() if float_ else BigIntegerField())


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def session_resource_families() -> Iterable[GaugeMetricFamily]:
    """Gauges per live session, labelled session/owner/backend (sum by backend for a backend's share)."""
    families = {key: GaugeMetricFamily(name, doc, labels=["session", "owner", "backend"]) for key, name, doc in _SERIES}
    try:
        rows = (TerminalSession.objects.filter(status__in=TerminalSession.LIVE)
                .exclude(resource_usage={}).values_list("id", "owner__username", "backend_id", "resource_usage"))
        for sid, owner, backend, usage in rows:
            for key, fam in families.items():
                value = (usage or {}).get(key)
                if isinstance(value, (int, float)):
                    fam.add_metric([str(sid), owner or "", backend or ""], value)
    except Exception:
        log.warning("metrics: session resource usage unavailable", exc_info=True)
    return families.values()
