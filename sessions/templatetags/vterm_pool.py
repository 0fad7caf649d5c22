"""{% vterm_pool_summary %}: the pool at a glance, atop the Backends changelist in the admin."""

from __future__ import annotations

from django import template

from ..pool import BackendPool

register = template.Library()


@register.inclusion_tag("admin/vterm_sessions/pool_summary.html")
def vterm_pool_summary() -> dict:
    pool = BackendPool()
    return {"pool": pool.as_dict(), "backends": pool.state.backends}
