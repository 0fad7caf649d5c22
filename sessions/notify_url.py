"""What a command's ``notify_url`` may look like: the serializer's check and the schema's pattern.

The shape only, no lookups: who may be called is sessions/webhooks.py's (``notify_url_check``). Apart
from it so that the serializers need not import the webhooks, which import the services.
"""

from __future__ import annotations

import re

NOTIFY_URL_MAX = 2048
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# What a notify_url may look like, as the OpenAPI schema states it too (ECMA-262 and Python read it
# alike): http(s), a host name, IPv4 or [IPv6] address, a port, a path and query in printable ASCII
# (percent-encode the rest); no user:password@, no #fragment.
NOTIFY_URL_PATTERN = (rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:{_LABEL}(?:\.{_LABEL})*\.?|\[[0-9A-Fa-f:.]+\])"
                      r'(?::[0-9]{1,5})?(?:[/?][!-"$-~]*)?$')  # printable ASCII but "#"
_NOTIFY_URL = re.compile(NOTIFY_URL_PATTERN[1:-1])


def notify_url_syntax_ok(url: str) -> bool:
    """The serializer's check (and the schema's pattern): the shape only, no lookups."""
    return len(url) <= NOTIFY_URL_MAX and _NOTIFY_URL.fullmatch(url) is not None
