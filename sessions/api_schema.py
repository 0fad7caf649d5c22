"""The OpenAPI schema says what the API really answers, errors included (API.md, "Errors").

drf-spectacular documents only the success of each operation; a client (or schemathesis)
also needs the errors every operation can give, each with its body and Retry-After.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema

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


class VtermAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response" or not self.path.startswith("/api/v1/"):
            return responses
        for code, (description, schema, headers) in _ERRORS.items():
            if code in responses:
                continue
            responses[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
            if headers:
                responses[code]["headers"] = headers
        return responses
