"""schemathesis hooks for tests/integration/test_schemathesis.py (SCHEMATHESIS_HOOKS names this module).

A session's `cwd` must be a directory that exists on the backend. The schema says so in words, but
no schema can know a machine's directories: a path the generator makes up ("/0", "/\u00e9") is
schema-valid and rightly refused with a 400 naming `cwd`. So a case meant to be valid (positive)
whose cwd does not exist here, where the test's backends run, gets one that does. Cases meant to
be invalid are left as they are; so is every other field.
"""

from __future__ import annotations

import os

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
    return case
