"""API tokens: DRF's token table, read as `Authorization: Bearer <token>` (API.md).

The one reading of the header (``bearer_token``) and the one lookup of a token's user
(``token_user``), used by every road: DRF's authentication (REST views), the hot
command route (sessions/command_route.py) and the WebSocket handshake (sessions/ws_auth.py).
The lookup is one indexed query on every call, never remembered: a deleted token or a
deactivated user is refused at once on every web process.
"""

from __future__ import annotations

import functools

from django.contrib.auth import get_user_model
from django.db import connection
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


def token_user_any(key: str):
    """The user of an API token, active or not, or None: one indexed query, on every call."""
    return next(iter(get_user_model().objects.raw(_token_user_sql(connection.vendor), [key])), None)


def token_user(key: str):
    """The active user of an API token, or None."""
    user = token_user_any(key)
    return user if user is not None and user.is_active else None


@functools.cache
def _token_user_sql(vendor: str) -> str:
    """The ORM's SQL for the user of a token, compiled once: compiling it is most of a lookup's cost
    (Token.objects.select_related("user").get(): ~1240 Python calls; this raw query of the same SQL: ~415)."""
    User = get_user_model()
    names = [f.attname for f in User._meta.concrete_fields]
    sql, params = User.objects.filter(auth_token__key="").values_list(*names).query.sql_with_params()
    assert params == ("",), params
    return sql


class BearerTokenAuthentication(TokenAuthentication):
    """DRF's TokenAuthentication, its header read by ``bearer_token`` and its token by ``token_user_any``."""

    keyword = "Bearer"

    def authenticate(self, request):
        token = bearer_token(get_authorization_header(request))
        return None if token is None else self.authenticate_credentials(token)

    def authenticate_credentials(self, key):
        user = token_user_any(key)
        if user is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        # request.auth: the token as read (its key and user; its `created` is not read).
        return user, Token(key=key, user=user)
