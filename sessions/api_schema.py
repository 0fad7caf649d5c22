"""The OpenAPI schema says what the API really takes and answers, errors included (docs/api.md).

drf-spectacular documents only the success of each operation; a client (or schemathesis)
also needs the errors every operation can give, each with its body and Retry-After.
And it states only the constraints DRF's own field arguments carry; what a serializer's
validate_* methods enforce on top (patterns, an exclusive minimum, one of two fields) is
stated next to them, in the serializer's ``openapi_schema`` (JSON Schema merged into the
generated one), so that a request the schema allows is one the server takes, and a
generated client can trust it.
"""

from __future__ import annotations

import copy

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter

from .idempotency import HEADER as IDEMPOTENCY_HEADER
from .idempotency import KEY_PATTERN


def schema_merge(schema: dict, extra: dict) -> dict:
    """``schema`` with ``extra`` merged in, objects key by key, anything else replaced (None: removed)."""
    for key, value in extra.items():
        if value is None:
            schema.pop(key, None)
        elif isinstance(value, dict):
            # Into the schema's own object, or a new one (where its Nones then remove nothing).
            schema[key] = schema_merge(schema[key] if isinstance(schema.get(key), dict) else {}, value)
        else:
            schema[key] = copy.deepcopy(value)
    return schema

_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}
_FIELD_ERRORS = {
    "type": "object",
    "description": "DRF field errors: each field (or non_field_errors / detail) with its messages.",
    "additionalProperties": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"},
                                       {"type": "object"}]},
}
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before retrying"}}

_ERRORS: dict[str, tuple[str, dict, dict]] = {
    "400": ("Invalid input: the fields and what is wrong with them.", _FIELD_ERRORS, {}),
    "401": ("No user: missing or bad credentials.", _DETAIL, {}),
    "403": ("Not allowed (staff only, or CSRF for cookie requests).", _DETAIL, {}),
    "404": ("No such session or command, or not yours.", _DETAIL, {}),
    "409": ("The session or command is in a state that does not allow this.", _DETAIL, {}),
    "413": ("The request body is too large.", _DETAIL, {}),
    "429": ("Over the user's rate or session quota.", _DETAIL, _RETRY_AFTER),
    "503": ("No backend (or Redis) can serve this right now.", _DETAIL, _RETRY_AFTER),
}

# The operations that take an Idempotency-Key (sessions/idempotency.py) declare it with this, and
# so get its two errors too.
IDEMPOTENCY_PARAMETER = OpenApiParameter(
    IDEMPOTENCY_HEADER, {"type": "string", "minLength": 1, "maxLength": 255, "pattern": KEY_PATTERN},
    OpenApiParameter.HEADER,
    description="Makes a retry safe (IETF httpapi Idempotency-Key draft): 1 to 255 printable ASCII characters "
                "(a UUID is a good key), bare or as a quoted Structured Field String. Kept per user for "
                "VTERM_IDEMPOTENCY_TTL (24 h): a repeat with the same body answers what the first made, as it is "
                "now, and makes nothing; with another body it is a 422; while the first is still being handled, "
                "a 409.")
_IDEMPOTENCY_ERRORS = {
    "409": (_ERRORS["409"][0] + " Or a request with the same Idempotency-Key is still being handled.",
            _DETAIL, {}),
    "422": ("This Idempotency-Key was used with a different request.", _DETAIL, {}),
}


class VtermAutoSchema(AutoSchema):
    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        return schema_merge(schema, getattr(serializer, "openapi_schema", {}))

    def _get_request_for_media_type(self, serializer, direction="request"):
        schema, required = super()._get_request_for_media_type(serializer, direction)
        # drf-spectacular requires a body only when a field is required; a rule across fields
        # ("one of data or keys") can require one too.
        return schema, required or bool(getattr(serializer, "openapi_schema", {}).get("oneOf"))

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response" or not self.path.startswith("/api/v1/"):
            return responses
        idempotent = any(getattr(p, "name", None) == IDEMPOTENCY_HEADER for p in self.get_override_parameters())
        for code, (description, schema, headers) in {**_ERRORS, **(_IDEMPOTENCY_ERRORS if idempotent else {})}.items():
            if code in responses:
                continue
            responses[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
            if headers:
                responses[code]["headers"] = headers
        return responses
