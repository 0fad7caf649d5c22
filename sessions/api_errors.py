"""Errors as API.md describes them: clear 4xx for what a client sent, 503 when no backend can help."""

from __future__ import annotations

import logging

from rest_framework import status
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = logging.getLogger(__name__)


class ServiceUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "No backend can take this work right now; try again shortly."
    default_code = "unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 2) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, ServiceUnavailable):
        response["Retry-After"] = str(exc.retry_after)
    if response is None:
        from kombu.exceptions import OperationalError as BrokerError
        from redis.exceptions import RedisError

        # Redis down or paused, seen by redis-py, by channels-redis (a RedisError too) or by
        # Celery's publish (kombu's OperationalError, within its bounded retry policy).
        if isinstance(exc, (RedisError, BrokerError, ConnectionError, TimeoutError)):
            log.warning("redis error on %s: %r", context["request"].path, exc)
            # Redis down or paused: fail fast and say so, rather than a 500.
            response = Response({"detail": "The session store (Redis) is unavailable; try again shortly."},
                                status=status.HTTP_503_SERVICE_UNAVAILABLE)
            response["Retry-After"] = "2"
    return response
