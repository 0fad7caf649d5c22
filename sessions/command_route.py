"""The hot route: `POST /api/v1/sessions/<id>/commands/` with a Bearer token, served in front of Django.

Programs run most of their commands through this one call, and through Django's
handler it cost far more than the shell (docs/bench.md): a thread hop per sync
middleware, DRF's request cycle, a token lookup per call. Here it is one hop to a
thread for the database work (services.command_submit, the same call as the DRF
view's, Idempotency-Key included) and the wait on Redis; the answer is rendered by
DRF's renderer, byte for byte as the view would.

Only the plain case is served here. Anything else (another route or method, no
Bearer token, an unknown token, a body that is not a JSON object or fails
validation) goes on to Django untouched, before anything was done, so that every
error keeps the one answer the full stack gives. An error raised while the command
is submitted goes through the API's exception handler, as in the view.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

from django.conf import settings
from django.db import close_old_connections
from django.http.request import split_domain_port, validate_host
from rest_framework.renderers import JSONRenderer

from . import services
from .api_errors import exception_handler
from .auth import token_user
from .http_metrics import record_command_route
from .idempotency import idempotency_key_parse
from .serializers import CommandCreateSerializer

PATH = re.compile(r"/api/v1/sessions/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/commands/")

# Long-lived threads keep their database connections; several, so that one waiting on a
# lock does not hold up the rest.
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="vterm-command")


class CommandRoute:
    def __init__(self, app) -> None:
        self.app = app
        self.renderer = JSONRenderer()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not (m := PATH.fullmatch(scope["path"])):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        token = _bearer(headers.get(b"authorization", b""))
        if (token is None or headers.get(b"content-type", b"").strip().lower() != b"application/json"
                or not _host_allowed(headers.get(b"host", b""))):
            return await self.app(scope, receive, send)
        body, more = await _read_body(receive)
        replay = _replay(body, more, receive)
        data = _command_data(body) if not more else None
        if data is None:
            return await self.app(scope, replay, send)
        began = time.perf_counter()
        answered = await self._serve(scope, replay, send, token, m.group(1), data, _idempotency_header(scope))
        if answered is not None:  # else Django answered, and its middleware counted it
            status, size = answered
            record_command_route(transport="https" if scope.get("scheme") == "https" else "http", status=status,
                                 request_bytes=len(body), response_bytes=size, seconds=time.perf_counter() - began)

    async def _serve(self, scope, replay, send, token: str, session_id: str, data: dict,
                     idempotency: str | None) -> tuple[int, int] | None:
        """Submit and answer: (status, body size), or None when the request was left to Django."""
        client = scope.get("client") or ("", 0)
        wait = data.get("wait") or 0
        try:
            # A plain executor call: asgiref's sync_to_async adds context copying this does not need.
            sub = await asyncio.get_running_loop().run_in_executor(
                _executor, self._submit, token, session_id, data, str(client[0]), idempotency)
        except _NotServed:
            await self.app(scope, replay, send)
            return None
        except Exception as exc:  # noqa: BLE001 (answered as the view would, or raised again)
            return await self._error(exc, scope, send)
        try:
            try:
                result = await services.command_wait(sub.cmd, wait) if wait else services.command_json(sub.cmd)
            except Exception as exc:  # noqa: BLE001 (answered as the view would, or raised again)
                return await self._error(exc, scope, send)
            return await self._respond(send, sub.status, result)
        finally:  # after the answer: the wait is over, whatever became of it
            await services.command_submit_end(sub)

    @staticmethod
    def _submit(token: str, session_id: str, data: dict, remote_addr: str,
                idempotency: str | None) -> services.CommandSubmitted:
        close_old_connections()  # as Django does at each request: drop a broken or expired connection
        user = token_user(token)
        if user is None:
            raise _NotServed  # DRF answers 401, with its headers
        return services.command_submit(user, session_id, command=data["command"], timeout=data.get("timeout"),
                                       idle_timeout=data.get("idle_timeout"), notify_url=data.get("notify_url"),
                                       wait=data.get("wait") or 0, remote_addr=remote_addr,
                                       idempotency_key=idempotency_key_parse(idempotency))

    async def _error(self, exc: Exception, scope, send) -> tuple[int, int]:
        response = exception_handler(exc, {"request": SimpleNamespace(path=scope["path"]), "view": None})
        if response is None:
            raise exc
        extra = [(k.lower().encode(), str(v).encode()) for k, v in response.items()
                 if k.lower() in ("retry-after", "www-authenticate")]
        return await self._respond(send, response.status_code, response.data, extra)

    async def _respond(self, send, status: int, data, extra: list | None = None) -> tuple[int, int]:
        payload = self.renderer.render(data)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"vary", b"Accept"),
            (b"allow", b"GET, POST, HEAD, OPTIONS"),
            # What SecurityMiddleware and XFrameOptionsMiddleware add to every other answer.
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
            (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()),
            *(extra or []),
        ]})
        await send({"type": "http.response.body", "body": payload})
        return status, len(payload)


class _NotServed(Exception):
    """Leave the request to Django."""


def _idempotency_header(scope) -> str | None:
    """The Idempotency-Key header as the view reads it (Django joins repeated headers with commas)."""
    values = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"idempotency-key"]
    return ",".join(values) if values else None


def _host_allowed(host: bytes) -> bool:
    """Django's ALLOWED_HOSTS check (its CommonMiddleware answers 400 otherwise)."""
    domain, _port = split_domain_port(host.decode("latin-1"))
    return bool(domain) and validate_host(domain, settings.ALLOWED_HOSTS)


def _bearer(value: bytes) -> str | None:
    parts = value.split()
    if len(parts) != 2 or parts[0] != b"Bearer":
        return None
    try:
        return parts[1].decode("ascii")
    except UnicodeDecodeError:
        return None


async def _read_body(receive, limit: int = 1 << 20) -> tuple[bytes, list]:
    """The body, or (what was read, the messages) when it is larger than ``limit`` or ends early."""
    chunks, messages, size = [], [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return b"".join(chunks), messages
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if not message.get("more_body"):
            return b"".join(chunks), []
        if size > limit:
            return b"".join(chunks), messages


def _replay(body: bytes, messages: list, receive):
    """A receive() that gives Django the request as it came."""
    pending = list(messages) or [{"type": "http.request", "body": body, "more_body": False}]

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()
    return replay


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
