"""Exceptions of the vterm client: each carries the server's message and HTTP status."""

from __future__ import annotations

from typing import Any


class VtermError(Exception):
    """Anything that went wrong talking to vterm.

    ``message`` is the server's own words where it gave any (DRF's ``detail``),
    ``status`` the HTTP status (``None`` when no answer came), ``body`` the parsed answer.
    """

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status else self.message


class ConnectionFailed(VtermError):
    """No answer from the server: wrong URL, server down, network trouble."""


class BadRequest(VtermError):
    """400: the server rejected what was sent. ``errors`` maps field name to its messages."""

    def __init__(self, message: str, status: int | None = 400, body: Any = None) -> None:
        super().__init__(message, status, body)
        self.errors: dict[str, list[str]] = _field_errors(body)


class AuthError(VtermError):
    """401 (no or bad token) or 403 (not allowed, e.g. staff-only endpoints)."""


class NotFound(VtermError):
    """404: no such session or command, or one that belongs to someone else."""


class Conflict(VtermError):
    """409: the request does not fit the current state (e.g. the session has ended)."""


class RateLimited(VtermError):
    """429: too many requests or over quota; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, status: int | None = 429, body: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class Unavailable(VtermError):
    """503: no backend (or Redis) can take the work now; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, status: int | None = 503, body: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status, body)
        self.retry_after = retry_after


class StreamClosed(VtermError):
    """The WebSocket closed; ``code`` is its close code (4401 auth, 4404 no such session, 1009 too large)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def _field_errors(body: Any) -> dict[str, list[str]]:
    if not isinstance(body, dict):
        return {}
    out: dict[str, list[str]] = {}
    for field, msgs in body.items():
        if isinstance(msgs, list):
            out[field] = [m if isinstance(m, str) else str(m) for m in msgs]
        elif isinstance(msgs, str) and field != "detail":
            out[field] = [msgs]
        elif isinstance(msgs, dict):  # nested (e.g. env: {NAME: [...]})
            out[field] = [f"{k}: {v}" for k, v in msgs.items()]
    return out


def _message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        if isinstance(body.get("detail"), str):
            return body["detail"]
        errors = _field_errors(body)
        if errors:
            return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def error_for_response(status: int, body: Any, headers: Any, reason: str = "") -> VtermError:
    """The exception for an HTTP answer that is not a success."""
    msg = _message(body, reason or f"HTTP {status}")
    if status == 400:
        return BadRequest(msg, status, body)
    if status in (401, 403):
        return AuthError(msg, status, body)
    if status == 404:
        return NotFound(msg, status, body)
    if status == 409:
        return Conflict(msg, status, body)
    if status == 429:
        return RateLimited(msg, status, body, retry_after=_retry_after(headers.get("Retry-After")))
    if status == 503:
        return Unavailable(msg, status, body, retry_after=_retry_after(headers.get("Retry-After")))
    return VtermError(msg, status, body)
