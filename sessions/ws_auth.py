"""WebSocket auth for Channels: `Authorization: Bearer <token>` on the handshake.

Browsers authenticate with the session cookie (Channels' AuthMiddlewareStack, which
wraps this); programs send the header. A token is never read from the URL, where it
would end up in access logs and browser history.
"""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework.exceptions import AuthenticationFailed

from .auth import BearerTokenAuthentication


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    for name, value in headers:
        if name.lower() == b"authorization":
            parts = value.decode("latin-1").split()
            if len(parts) == 2 and parts[0].lower() == "bearer":
                return parts[1]
            return ""  # present but malformed: not authenticated
    return None


@database_sync_to_async
def _user_for_token(key: str):
    try:
        user, _ = BearerTokenAuthentication().authenticate_credentials(key)
    except AuthenticationFailed:
        return AnonymousUser()
    return user


class BearerTokenAuthMiddleware(BaseMiddleware):
    """Sets scope["user"] from a Bearer header; a bad token means nobody, not the cookie's user."""

    async def __call__(self, scope, receive, send):
        token = bearer_token(scope.get("headers", []))
        if token is not None:
            scope = dict(scope, user=await _user_for_token(token) if token else AnonymousUser())
        return await super().__call__(scope, receive, send)


class BrowserOriginValidator(OriginValidator):
    """Channels' AllowedHostsOriginValidator, except that a handshake with no Origin passes.

    Browsers always send Origin on a WebSocket handshake, so a cross-site page riding on
    the session cookie is refused; programs send none and authenticate with a Bearer header.
    """

    def valid_origin(self, parsed_origin) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def allowed_hosts_origin_validator(application):
    hosts = settings.ALLOWED_HOSTS or (["localhost", "127.0.0.1", "[::1]"] if settings.DEBUG else [])
    return BrowserOriginValidator(application, hosts)
