"""schemathesis hooks for tests/integration/test_schemathesis.py (SCHEMATHESIS_HOOKS names this module).

A session's `cwd` must be a directory that exists on the backend. The schema says so in words, but
no schema can know a machine's directories: a path the generator makes up ("/0", "/\u00e9") is
schema-valid and rightly refused with a 400 naming `cwd`. So a case meant to be valid (positive)
whose cwd does not exist here, where the test's backends run, gets one that does. Cases meant to
be invalid are left as they are; so is every other field.

Likewise an Idempotency-Key: a key the generator makes up ("0") is schema-valid, but the second
request that carries it with another body is rightly a 422 (the key was used for another
request), which no schema can foresee either. A positive case's key is made a fresh one.

A command's `notify_url` likewise: its host must resolve to a public address, which a generator cannot
know, and a test must neither look names up nor call anything beyond loopback. Valid cases go without one
(tests/integration/test_webhooks.py covers it); invalid ones keep theirs, refused before any lookup.
"""

from __future__ import annotations

import os
import uuid

import schemathesis
from schemathesis import GenerationMode

EXISTING_DIR = "/tmp"


@schemathesis.hook
def map_case(ctx, case):
    body = case.body
    if (case.operation.method.upper() == "POST" and case.operation.path == "/api/v1/sessions/"
            and case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
            and isinstance(body, dict) and isinstance(body.get("cwd"), str) and body["cwd"]
            and not os.path.isdir(body["cwd"])):
        case.body = {**body, "cwd": EXISTING_DIR}
    if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE and case.headers:
        for name in case.headers:
            if name.lower() == "idempotency-key":
                case.headers[name] = str(uuid.uuid4())
    if (case.operation.method.upper() == "POST" and case.operation.path == "/api/v1/sessions/{session_id}/commands/"
            and case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
            and isinstance(body, dict) and "notify_url" in body):
        case.body = {k: v for k, v in body.items() if k != "notify_url"}
    return case
