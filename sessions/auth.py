"""API tokens: DRF's token table, read as `Authorization: Bearer <token>` (API.md).

The one reading of the header (``bearer_token``) and the one lookup of a token's user
(``token_lookup``), used by every road: DRF's authentication (REST views), the hot
command route (sessions/command_route.py) and the WebSocket handshake (sessions/ws_auth.py).
The lookup is one indexed query on every call, never remembered: a deleted token or a
deactivated user is refused at once on every web process.
"""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.authtoken.models import Token

KEYWORD = b"bearer"


def bearer_token(authorization: bytes) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value; None when it names another
    scheme (or is empty). A malformed Bearer value raises AuthenticationFailed, with DRF's words."""
    parts = authorization.split()
    if not parts or parts[0].lower() != KEYWORD:
        return None
    if len(parts) == 1:
        raise exceptions.AuthenticationFailed(_("Invalid token header. No credentials provided."))
    if len(parts) > 2:
        raise exceptions.AuthenticationFailed(_("Invalid token header. Token string should not contain spaces."))
    try:
        return parts[1].decode()
    except UnicodeError:
        raise exceptions.AuthenticationFailed(
            _("Invalid token header. Token string should not contain invalid characters.")) from None


def token_lookup(key: str) -> Token | None:
    """The token with its user (one query), or None."""
    try:
        return Token.objects.select_related("user").get(key=key)
    except Token.DoesNotExist:
        return None


def token_user(key: str):
    """The active user of an API token, or None."""
    token = token_lookup(key)
    return token.user if token is not None and token.user.is_active else None


class BearerTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication, its header read by ``bearer_token`` and its token by ``token_lookup``."""

    keyword = "Bearer"

    def authenticate(self, request):
        token = bearer_token(get_authorization_header(request))
        return None if token is None else self.authenticate_credentials(token)

    def authenticate_credentials(self, key):
        token = token_lookup(key)
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token
