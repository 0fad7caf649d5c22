"""The one reading of `Authorization: Bearer <token>` (sessions/auth.py), used by DRF's authentication,
the hot command route and the WebSocket handshake: DRF's rules and words."""

from __future__ import annotations

import pytest
from rest_framework.exceptions import AuthenticationFailed

from sessions.auth import bearer_token


@pytest.mark.parametrize("value, token", [
    (b"Bearer abc123", "abc123"),
    (b"bearer abc123", "abc123"),  # the scheme is case-insensitive, as in DRF
    (b"  Bearer   abc123 ", "abc123"),
    (b"", None),  # no header
    (b"Token abc123", None),  # another scheme: left to the next authentication
    (b"Basic YWxpY2U6cHc=", None),
])
def test_a_token_or_none(value, token):
    assert bearer_token(value) == token


@pytest.mark.parametrize("value, words", [
    (b"Bearer", "No credentials provided"),
    (b"Bearer a b", "should not contain spaces"),
    (b"Bearer nope,Bearer abc", "should not contain spaces"),  # two headers, joined as Django joins them
    (b"Bearer \xff\xfe", "invalid characters"),
])
def test_a_malformed_bearer_value_fails_with_drfs_words(value, words):
    with pytest.raises(AuthenticationFailed, match=words):
        bearer_token(value)
