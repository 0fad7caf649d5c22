"""WebSocket auth for Channels: `Authorization: Bearer <token>` on the handshake, the
Origin check, and the re-check of an open connection's credentials.

Browsers authenticate with the session cookie (Channels' AuthMiddlewareStack, which
wraps this); programs send the header. A token is never read from the URL, where it
would end up in access logs and browser history.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest
from django.utils.http import is_same_domain
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed

from .auth import bearer_token, token_user


def _handshake_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Bearer token of the handshake; "" when an Authorization header is there but holds none
    (another scheme, or malformed): that means nobody, not the cookie's user."""
    for name, value in headers:
        if name.lower() == b"authorization":
            try:
                return bearer_token(value) or ""
            except AuthenticationFailed:
                return ""
    return None


@database_sync_to_async
def _user_for_token(key: str):
    return token_user(key) or AnonymousUser()


class BearerTokenAuthMiddleware(BaseMiddleware):
    """Sets scope["user"] from a Bearer header; a bad token means nobody, not the cookie's user.

    scope["auth_token"] keeps the token a connection was opened with: an open connection is
    closed when that token is deleted (``credentials_revoked``)."""

    async def __call__(self, scope, receive, send):
        token = _handshake_token(scope.get("headers", []))
        if token is not None:
            scope = dict(scope, user=await _user_for_token(token) if token else AnonymousUser(), auth_token=token)
        return await super().__call__(scope, receive, send)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def websocket_origin_allowed(scope) -> bool:
    """True when the handshake's Origin is this site's, as Django's CSRF check decides for REST:
    the same scheme, host and port as the request (whose Host must be one of ALLOWED_HOSTS),
    or one of CSRF_TRUSTED_ORIGINS (``https://*.example.com`` included).

    A handshake without Origin passes: browsers always send one, so a page on another site (or
    on another port of this host) is refused; programs send none and authenticate with a header.
    The scheme is https when the connection is TLS or the proxy in front says so
    (X-Forwarded-Proto: a header a page's script cannot set on a WebSocket handshake).
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    origin = origin.strip().lower()
    host = (_header(scope, b"host") or "").strip().lower()
    if _host_allowed(host):
        secure = scope.get("scheme") in ("wss", "https") or (
            (_header(scope, b"x-forwarded-proto") or "").strip().lower() == "https")
        if origin == f"{'https' if secure else 'http'}://{host}":
            return True
    trusted = [o.lower() for o in settings.CSRF_TRUSTED_ORIGINS]
    if origin in trusted:
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    return any(is_same_domain(parsed.netloc, t.netloc.lstrip("*"))
               for t in map(urlsplit, trusted) if "*" in t.netloc and t.scheme == parsed.scheme)


def _host_allowed(host: str) -> bool:
    """Django's own ALLOWED_HOSTS check (HttpRequest.get_host, as CommonMiddleware applies it to REST)."""
    request = HttpRequest()
    request.META["HTTP_HOST"] = host
    try:
        request.get_host()
    except DisallowedHost:
        return False
    return True


class SameOriginValidator(BaseMiddleware):
    """Refuses (HTTP 403) a WebSocket handshake from another origin (``websocket_origin_allowed``)."""

    async def __call__(self, scope, receive, send):
        if not websocket_origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await super().__call__(scope, receive, send)


def credentials_revoked(connections: list[tuple[int, str | None, str | None]]) -> set[int]:
    """Which open connections may no longer be used: the indexes, in ``connections``, of the
    ``(user_id, token, session_key)`` whose user is inactive or gone, whose token was deleted
    (when opened with one), or whose login session ended (cookie: logged out, expired, or the
    password changed; Django's own ``auth.get_user`` decides, as for a page).

    All the tokens in one query; each cookie login one read of its session."""
    keys = {token for _, token, _ in connections if token}
    live_tokens = dict(Token.objects.filter(key__in=keys, user__is_active=True).values_list("key", "user_id"))
    store = import_module(settings.SESSION_ENGINE).SessionStore
    revoked = set()
    for i, (user_id, token, session_key) in enumerate(connections):
        if token:
            ok = live_tokens.get(token) == user_id
        else:
            user = auth.get_user(SimpleNamespace(session=store(session_key=session_key)))
            ok = user.is_authenticated and user.pk == user_id
        if not ok:
            revoked.add(i)
    return revoked
