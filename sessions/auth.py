from rest_framework.authentication import TokenAuthentication


class BearerTokenAuthentication(TokenAuthentication):
    """`Authorization: Bearer <token>` (API.md), backed by DRF's token table."""

    keyword = "Bearer"
