"""The JSON of API.md, and the validation of everything a client may send."""

from __future__ import annotations

import math
import re

from django.conf import settings
from rest_framework import serializers

from workers.tmux.protocol import valid_key

from .models import Command, TerminalSession

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the service sets itself or that would break the shell integration.
RESERVED_ENV = {"PROMPT_COMMAND", "PS0", "PS1", "PS2", "BASH_ENV", "ENV", "TMUX", "TMUX_PANE", "SHELLOPTS",
                "BASHOPTS", "IFS", "LD_PRELOAD"}
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024
COLS_RANGE = (10, 1000)
ROWS_RANGE = (2, 500)
# Control characters a command may not contain: all but tab and newline (CR LF is folded).
_BAD_COMMAND_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF would quietly turn 42 or true into "42" / "True"."""

    default_error_messages = {
        "surrogate": "May not contain unpaired surrogates (\\ud800-\\udfff): not text a terminal can take.",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            data.encode("utf-8")  # JSON may carry a lone "\ud800", which no UTF-8 pipe (tmux) can take
        except UnicodeEncodeError:
            self.fail("surrogate")
        return super().to_internal_value(data)


class SessionSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    backend = serializers.CharField(source="backend_id", read_only=True, allow_null=True)

    class Meta:
        model = TerminalSession
        fields = ["id", "name", "owner", "status", "status_reason", "backend", "cwd", "env", "cols", "rows",
                  "created_at", "last_activity", "command_count", "resource_usage", "limits"]
        read_only_fields = fields


class SessionLimitsSerializer(serializers.Serializer):
    """Lower sandbox limits for one session (each at most the user's own: docs/security.md)."""

    processes = serializers.IntegerField(min_value=16, required=False)
    memory_mb = serializers.IntegerField(min_value=32, required=False)
    cpu_weight = serializers.IntegerField(min_value=1, max_value=10000, required=False)

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({k: ["Unknown limit."] for k in unknown})
        return super().to_internal_value(data)


class SessionCreateSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
    cwd = StrictCharField(max_length=4096, required=False, allow_blank=True, default="", trim_whitespace=False)
    env = serializers.DictField(child=StrictCharField(allow_blank=True, trim_whitespace=False,
                                                            max_length=MAX_ENV_VALUE),
                                required=False, default=dict)
    cols = serializers.IntegerField(min_value=COLS_RANGE[0], max_value=COLS_RANGE[1], required=False, default=120)
    rows = serializers.IntegerField(min_value=ROWS_RANGE[0], max_value=ROWS_RANGE[1], required=False, default=40)
    limits = SessionLimitsSerializer(required=False, default=dict)

    def validate_name(self, value: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise serializers.ValidationError("May not contain control characters.")
        return value

    def validate_cwd(self, value: str) -> str:
        if "\x00" in value:
            raise serializers.ValidationError("May not contain NUL bytes.")
        if value and not value.startswith("/"):
            raise serializers.ValidationError("Must be an absolute path (starting with '/').")
        return value

    def validate_env(self, value: dict) -> dict:
        if len(value) > MAX_ENV_VARS:
            raise serializers.ValidationError(f"At most {MAX_ENV_VARS} variables.")
        for name, val in value.items():
            if not ENV_NAME.match(name) or len(name) > 255:
                raise serializers.ValidationError(f"{name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*).")
            if name in RESERVED_ENV or name.startswith(("VTERM_", "__VTERM")):
                raise serializers.ValidationError(f"{name!r} is reserved by vterm and the shell.")
            if "\x00" in val:
                raise serializers.ValidationError(f"The value of {name!r} contains a NUL byte.")
        return value


class CommandSerializer(serializers.ModelSerializer):
    session = serializers.UUIDField(source="session_id", read_only=True)

    class Meta:
        model = Command
        fields = ["id", "session", "seq", "command", "status", "reason", "exit_code", "output",
                  "output_truncated", "cwd", "timeout", "submitted_at", "started_at", "finished_at",
                  "duration_ms"]
        read_only_fields = fields


def _positive_seconds(name: str, maximum: float):
    return serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=maximum,
                                  help_text=f"{name} in seconds")


class CommandCreateSerializer(serializers.Serializer):
    command = StrictCharField(trim_whitespace=False, allow_blank=False)
    timeout = _positive_seconds("timeout", settings.VTERM["MAX_TIMEOUT"])
    wait = _positive_seconds("wait", settings.VTERM["MAX_WAIT"])

    def validate_command(self, value: str) -> str:
        value = value.replace("\r\n", "\n")
        limit = settings.VTERM["COMMAND_MAX_BYTES"]
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            raise serializers.ValidationError(f"Longer than {limit} bytes.")
        if "\x00" in value:
            raise serializers.ValidationError("May not contain NUL bytes.")
        bad = _BAD_COMMAND_CHARS.search(value)
        if bad:
            raise serializers.ValidationError(
                f"May not contain control character {bad.group()!r}; send keystrokes with the input endpoint.")
        if not value.strip():
            raise serializers.ValidationError("May not be blank.")
        return value.rstrip("\n")

    def validate_timeout(self, value):
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise serializers.ValidationError("Must be a number of seconds greater than 0.")
        return value

    def validate_wait(self, value):
        if value is not None and not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number of seconds.")
        return value


class InputSerializer(serializers.Serializer):
    data = StrictCharField(required=False, trim_whitespace=False, allow_blank=True)
    keys = serializers.ListField(child=StrictCharField(max_length=32), required=False, max_length=256)

    def validate_data(self, value: str) -> str:
        limit = settings.VTERM["INPUT_MAX_BYTES"]
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            raise serializers.ValidationError(f"Longer than {limit} bytes.")
        if "\x00" in value:
            raise serializers.ValidationError("May not contain NUL bytes.")
        return value

    def validate_keys(self, value: list[str]) -> list[str]:
        bad = [k for k in value if not valid_key(k)]
        if bad:
            raise serializers.ValidationError(f"Not tmux key names: {bad[:5]} (e.g. 'C-c', 'Enter', 'Up', 'F5', 'a').")
        return value

    def validate(self, attrs):
        if ("data" in attrs) == ("keys" in attrs):
            raise serializers.ValidationError({"non_field_errors": ["Give exactly one of 'data' or 'keys'."]})
        return attrs


class ResizeSerializer(serializers.Serializer):
    cols = serializers.IntegerField(min_value=COLS_RANGE[0], max_value=COLS_RANGE[1])
    rows = serializers.IntegerField(min_value=ROWS_RANGE[0], max_value=ROWS_RANGE[1])


class ScreenSerializer(serializers.Serializer):
    cols = serializers.IntegerField()
    rows = serializers.IntegerField()
    lines = serializers.ListField(child=StrictCharField(allow_blank=True))
    cursor = serializers.DictField(child=serializers.IntegerField())
