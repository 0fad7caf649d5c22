"""API tokens: DRF's token table, read as `Authorization: Bearer <token>` (API.md)."""

from __future__ import annotations

import time

from django.conf import settings
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


class BearerTokenAuthentication(TokenAuthentication):
    keyword = "Bearer"


_CACHE_MAX = 10_000
_cache: dict[str, tuple[float, object]] = {}


def token_user(key: str):
    """The active user of an API token, or None; remembered for VTERM_TOKEN_CACHE_SECONDS.

    For the hot command route (sessions/command_route.py), which answers without DRF's
    authentication: one database read per token every few seconds instead of one per
    call. So a deleted token or a deactivated user still works there for up to that long.
    """
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        _cache.pop(key, None)
        return None
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = (now + settings.VTERM["TOKEN_CACHE_SECONDS"], token.user)
    return token.user
