"""The hot route: `POST /api/v1/sessions/<id>/commands/` with a Bearer token, served in front of Django.

Programs run most of their commands through this one call, and through Django's
handler it cost far more than the shell (docs/bench.md): a thread hop per sync
middleware, DRF's request cycle. Here it is one hop to one of the process's sync threads
(vterm_project/sync_threads.py) for the database work (services.command_submit, the
same call as the DRF view's, Idempotency-Key included) and the wait on Redis.

Nothing the rest of the stack does is written again here. The body was bounded by
RequestBodyLimit and is read with its reader (vterm_project/body_limit.py); the token is
read and looked up by sessions/auth.py, as DRF's authentication does, on every call;
Django's own middleware runs around the answer (vterm_project/middleware_run.py): the
ALLOWED_HOSTS check, the security headers and django-prometheus' HTTP series come from
there; the answer is rendered by DRF's renderer, byte for byte as the view would.

Only the plain case is served here. Anything else (another route or method, no
Bearer token, an unknown token, a body that is not a JSON object or fails
validation) goes on to Django untouched, before anything was done, so that every
error keeps the one answer the full stack gives. An error raised while the command
is submitted goes through the API's exception handler, as in the view.
"""

from __future__ import annotations

import io
import json
import re
from types import SimpleNamespace

from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.db import close_old_connections
from django.http import HttpResponse
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.renderers import JSONRenderer

from vterm_project import hop_trace
from vterm_project.body_limit import body_complete, body_receive, body_replay
from vterm_project.middleware_run import MiddlewareRun
from vterm_project.sync_threads import sync_threads

from . import audit, services
from .api_errors import exception_handler
from .auth import bearer_token, token_user
from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import idempotency_key_parse
from .serializers import CommandCreateSerializer

PATH = re.compile(r"/api/v1/sessions/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/commands/")
# What DRF's APIView.finalize_response adds to the view's answers.
ALLOW = "GET, POST, HEAD, OPTIONS"
# Django's own response writer; an instance without __init__ (which would build a second middleware
# chain): send_response needs only the class's chunk size.
_django_sender = ASGIHandler.__new__(ASGIHandler)


class CommandRoute:
    def __init__(self, app) -> None:
        self.app = app
        self.renderer = JSONRenderer()
        self.middleware = MiddlewareRun()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not (m := PATH.fullmatch(scope["path"])):
            return await self.app(scope, receive, send)
        hop_trace.mark("web.recv")
        headers = dict(scope["headers"])
        try:
            # Repeated headers joined as Django joins them, so that DRF would read the same value.
            token = bearer_token(b",".join(v for k, v in scope["headers"] if k == b"authorization"))
        except AuthenticationFailed:
            token = None  # DRF answers 401, with its words
        if token is None or headers.get(b"content-type", b"").strip().lower() != b"application/json":
            return await self.app(scope, receive, send)
        messages, _size = await body_receive(receive)
        replay = body_replay(messages, receive)
        body = body_complete(messages)
        data = _command_data(body) if body is not None else None
        if data is None:
            return await self.app(scope, replay, send)
        try:
            submitted = await sync_threads().run(self._submit, scope, body, token, m.group(1), data)
        except _NotServed:
            return await self.app(scope, replay, send)
        hop_trace.mark("web.submitted")
        request, sub, answer = submitted
        if answer is not None:  # a middleware answered (a Host not in ALLOWED_HOSTS: 400), or an error
            return await _django_sender.send_response(answer, send)
        try:
            try:
                wait = data.get("wait") or 0
                result = await services.command_wait(sub.cmd, wait) if wait else services.command_json(sub.cmd)
                hop_trace.mark("web.reply")
                response = self._response(sub.status, result)
            except Exception as exc:  # noqa: BLE001 (answered as the view would)
                response = self._error(exc, request)
            response = self.middleware.response(request, response)
            await services.command_submit_answered(sub)  # the key is free before the answer leaves
            await _django_sender.send_response(response, send)
            hop_trace.mark("web.sent")
        finally:  # after the answer: the wait is over, whatever became of it
            await services.command_submit_end(sub)

    def _submit(self, scope, body: bytes, token: str, session_id: str, data: dict):
        """On a sync thread: (the Django request, what command_submit gave, None), or (request, None,
        the finished answer) when a middleware or an error answered; _NotServed to leave it to Django."""
        hop_trace.mark("web.thread")
        close_old_connections()  # as Django does at each request: drop a broken or expired connection
        user = token_user(token)
        if user is None:
            raise _NotServed  # DRF answers 401, with its headers
        request = ASGIRequest(scope, io.BytesIO(body))
        if (answer := self.middleware.request(request)) is not None:
            return request, None, answer
        try:
            sub = services.command_submit(
                user, session_id, command=data["command"], timeout=data.get("timeout"),
                idle_timeout=data.get("idle_timeout"), notify_url=data.get("notify_url"), wait=data.get("wait") or 0,
                remote_addr=audit.request_addr(request),
                idempotency_key=idempotency_key_parse(request.headers.get(IDEMPOTENCY_HEADER)))
        except Exception as exc:  # noqa: BLE001 (answered as the view would)
            return request, None, self.middleware.response(request, self._error(exc, request))
        return request, sub, None

    def _error(self, exc: Exception, request) -> HttpResponse:
        """The view's answer to an error: the API's exception handler, else Django's."""
        drf = exception_handler(exc, {"request": SimpleNamespace(path=request.path), "view": None})
        if drf is None:
            return self.middleware.exception(request, exc)
        return self._response(drf.status_code, drf.data,
                              [(k, v) for k, v in drf.items() if k.lower() != "content-type"])

    def _response(self, status: int, data, headers=()) -> HttpResponse:
        response = HttpResponse(self.renderer.render(data), status=status, content_type="application/json")
        response["Vary"] = "Accept"
        response["Allow"] = ALLOW
        for name, value in headers:
            response[name] = value
        return response


class _NotServed(Exception):
    """Leave the request to Django."""


def _reject_constant(name: str):
    raise ValueError(name)  # NaN and Infinity are not JSON; DRF answers those


def _command_data(body: bytes) -> dict | None:
    """The validated fields, or None to leave the request (and its error) to DRF."""
    try:
        raw = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    ser = CommandCreateSerializer(data=raw)
    return ser.validated_data if ser.is_valid() else None
