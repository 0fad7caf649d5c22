"""ASGI middleware: a request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is answered 413.

Django's ASGI handler reads the whole body (spooling it to disk) before any view or
middleware runs, and DRF's JSON parser does not apply DATA_UPLOAD_MAX_MEMORY_SIZE at
all; so the limit is kept here, before Django: by Content-Length when the client sends
one, and by counting otherwise (chunked), without reading past the limit. This is the
one limit and the one body reader: the hot command route, behind it, reads with
``body_receive`` too.
"""

from __future__ import annotations

import json

from django.conf import settings


class RequestBodyLimit:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            return await _too_large(send, limit)
        if declared is not None:
            return await self.app(scope, receive, send)
        # No Content-Length: read the body here (at most limit bytes), then hand it on.
        messages, size = await body_receive(receive, limit)
        if size > limit:
            return await _too_large(send, limit)
        return await self.app(scope, body_replay(messages, receive), send)


async def body_receive(receive, limit: int | None = None) -> tuple[list[dict], int]:
    """The request's messages up to the end of its body (or a disconnect), and the body's size;
    it stops as soon as the size is over ``limit``. Applications behind RequestBodyLimit (the hot
    command route) read with no limit of their own: the body was bounded here."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, size
        size += len(message.get("body", b""))
        if not message.get("more_body", False) or (limit is not None and size > limit):
            return messages, size


def body_complete(messages: list[dict]) -> bytes | None:
    """The whole body read by ``body_receive``, or None if it ended early (a disconnect)."""
    last = messages[-1]
    if last["type"] != "http.request" or last.get("more_body", False):
        return None
    return b"".join(m.get("body", b"") for m in messages)


def body_replay(messages: list[dict], receive):
    """A receive() that gives the messages already read, then reads on."""
    pending = list(messages)

    async def replay():
        return pending.pop(0) if pending else await receive()
    return replay


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"detail": f"The request body is larger than {limit} bytes."}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
