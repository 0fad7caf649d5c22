"""ASGI middleware: a request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE is answered 413.

Django's ASGI handler reads the whole body (spooling it to disk) before any view or
middleware runs, and DRF's JSON parser does not apply DATA_UPLOAD_MAX_MEMORY_SIZE at
all; so the limit is kept here, before Django: by Content-Length when the client sends
one, and by counting otherwise (chunked), without reading past the limit.
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
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await _too_large(send, limit)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()
        return await self.app(scope, replay, send)


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
