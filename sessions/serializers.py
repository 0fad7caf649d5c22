"""The JSON of API.md, and the validation of everything a client may send."""

from __future__ import annotations

import functools
import math
import re
from typing import ClassVar

from django.conf import settings
from rest_framework import serializers

from workers.tmux.protocol import KEY_NAME_PATTERN, valid_key

from .models import Command, TerminalSession
from .notify_url import NOTIFY_URL_MAX, NOTIFY_URL_PATTERN, notify_url_syntax_ok

ENV_NAME_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"
ENV_NAME = re.compile(ENV_NAME_PATTERN)
ENV_NAME_MAX = 255
# Names the service sets itself or that would break the shell integration.
RESERVED_ENV = {"PROMPT_COMMAND", "PS0", "PS1", "PS2", "BASH_ENV", "ENV", "TMUX", "TMUX_PANE", "SHELLOPTS",
                "BASHOPTS", "IFS", "LD_PRELOAD"}
MAX_ENV_VARS = 200
MAX_ENV_VALUE = 32 * 1024
COLS_RANGE = (10, 1000)
ROWS_RANGE = (2, 500)
# Control characters a command may not contain: all but tab and newline (CR LF is folded).
_BAD_COMMAND_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

# What the validation below enforces, as OpenAPI (ECMA-262) patterns, so that the schema allows exactly
# what the server takes (tests/unit/test_api_schema.py holds the two together).
_NO_NUL = r"^[^\u0000]*$"
# Python's str.isspace() characters beyond ASCII (a command is blank if it has nothing else but tab,
# newline, CR LF and space; the other ASCII spaces are refused control characters anyway).
_WIDE_SPACE = r"\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# All of them: what DRF strips from both ends of a field with trim_whitespace (name, key names)
# before it checks the rest.
_SPACE = rf"[\t\n\u000b\u000c\r\u001c-\u001f {_WIDE_SPACE}]*"
_COMMAND_CHAR = r"(?:\r\n|[^\u0000-\u0008\u000b-\u001f\u007f])"
COMMAND_PATTERN = (rf"^(?:\r\n|[\t\n {_WIDE_SPACE}])*"  # blank so far,
                   rf"[^\u0000-\u0020\u007f{_WIDE_SPACE}]"  # one character that is not space,
                   rf"{_COMMAND_CHAR}*$")  # then anything but the refused control characters


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


class WholeNumberField(serializers.IntegerField):
    """A JSON number with no fraction (120, or 120.0 as JSON Schema counts it): not "120" or true,
    which DRF would quietly take."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float):
            if not data.is_integer():  # also inf and nan
                self.fail("invalid")
            data = int(data)  # 1e16: DRF would parse str(data), "1e+16", and refuse it
        return super().to_internal_value(data)


class NumberField(serializers.FloatField):
    """A JSON number: not "5" or true, which DRF would quietly take."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class SessionSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    backend = serializers.CharField(source="backend_id", read_only=True, allow_null=True)

    class Meta:
        model = TerminalSession
        fields = ["id", "name", "owner", "status", "status_reason", "backend", "cwd", "env", "cols", "rows",
                  "created_at", "last_activity", "command_count", "resource_usage", "limits"]
        read_only_fields = fields

    # JSON fields, which drf-spectacular cannot type by itself (docs/api.md, docs/resource_usage.md).
    openapi_schema: ClassVar[dict] = {"properties": {
        "env": {"type": "object", "additionalProperties": {"type": "string"}},
        "resource_usage": {
            "type": "object", "description": "The backend's last sample of the session's processes; {} until the first.",
            "properties": {"memory_bytes": {"type": "integer"}, "pss_bytes": {"type": ["integer", "null"]},
                           "cpu_percent": {"type": "number"}, "processes": {"type": "integer"},
                           "oom_kills": {"type": "integer",
                                         "description": "processes killed at the sandbox's memory limit"},
                           "process_limit_hits": {"type": "integer",
                                                  "description": "forks refused at the sandbox's process limit"},
                           "sampled_at": {"type": "string", "format": "date-time"}}},
        "limits": {
            "type": "object", "description": "The sandbox limits the session was created with (docs/security.md).",
            "properties": {"processes": {"type": "integer"}, "memory_mb": {"type": "integer"},
                           "cpu_weight": {"type": "integer"}}},
    }}


class SessionLimitsSerializer(serializers.Serializer):
    """Lower sandbox limits for one session (each at most the user's own: docs/security.md)."""

    processes = WholeNumberField(min_value=16, required=False)
    memory_mb = WholeNumberField(min_value=32, required=False)
    cpu_weight = WholeNumberField(min_value=1, max_value=10000, required=False)
    openapi_schema: ClassVar[dict] = {"additionalProperties": False}

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
    cols = WholeNumberField(min_value=COLS_RANGE[0], max_value=COLS_RANGE[1], required=False, default=120)
    rows = WholeNumberField(min_value=ROWS_RANGE[0], max_value=ROWS_RANGE[1], required=False, default=40)
    limits = SessionLimitsSerializer(required=False, default=dict)

    # The validate_* methods below, for the OpenAPI schema (sessions/api_schema.py).
    openapi_schema: ClassVar[dict] = {"properties": {
        "name": {"pattern": rf"^{_SPACE}[^\u0000-\u001f\u007f]{{0,100}}{_SPACE}$", "maxLength": None,
                 "description": "At most 100 characters, no control characters, once spaces at either end are cut."},
        "cwd": {"pattern": r"^(?:/[^\u0000]*)?$",
                "description": "Absolute path of a directory the session's shell can enter: in its sandbox, "
                               "the user's home or the system's directories (else 400 naming `cwd`); "
                               "empty: the user's home."},
        "env": {"maxProperties": MAX_ENV_VARS,
                "additionalProperties": {"pattern": _NO_NUL},
                "propertyNames": {"pattern": f"^{ENV_NAME_PATTERN}$", "maxLength": ENV_NAME_MAX,
                                  "not": {"anyOf": [{"enum": sorted(RESERVED_ENV)},
                                                    {"pattern": "^(?:VTERM_|__VTERM)"}]}},
                "description": "Variables exported in the shell. Names reserved by vterm and the shell "
                               "(and any starting with VTERM_ or __VTERM) are refused."},
    }}

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
            if not ENV_NAME.fullmatch(name) or len(name) > ENV_NAME_MAX:
                raise serializers.ValidationError(f"{name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*).")
            if name in RESERVED_ENV or name.startswith(("VTERM_", "__VTERM")):
                raise serializers.ValidationError(f"{name!r} is reserved by vterm and the shell.")
            if "\x00" in val:
                raise serializers.ValidationError(f"The value of {name!r} contains a NUL byte.")
        return value


class _NullIfBlank(serializers.CharField):
    def to_representation(self, value):
        return value or None


class CommandSerializer(serializers.ModelSerializer):
    session = serializers.UUIDField(source="session_id", read_only=True)
    notify_url = _NullIfBlank(read_only=True, allow_null=True,
                              help_text="where its end is POSTed (docs/api.md, Webhooks); null: nowhere")

    class Meta:
        model = Command
        fields = ["id", "session", "seq", "command", "status", "reason", "exit_code", "output",
                  "output_truncated", "cwd", "timeout", "idle_timeout", "submitted_at", "started_at", "finished_at",
                  "duration_ms", "notify_url"]
        read_only_fields = fields


@functools.cache
def _command_serializer() -> CommandSerializer:
    return CommandSerializer()


def command_json(cmd: Command) -> dict:
    """The command as API.md shows it (one serializer reused: building its fields costs more than using them)."""
    return _command_serializer().to_representation(cmd)


def _seconds(help_text: str, maximum: float):
    return NumberField(required=False, allow_null=True, min_value=0, max_value=maximum, help_text=help_text)


class CommandCreateSerializer(serializers.Serializer):
    command = StrictCharField(trim_whitespace=False, allow_blank=False)
    timeout = _seconds("seconds; then Ctrl-C, then its processes are killed", settings.VTERM["MAX_TIMEOUT"])
    idle_timeout = _seconds("seconds without output; then it is stopped as by timeout", settings.VTERM["MAX_TIMEOUT"])
    wait = _seconds("seconds to wait for the command to end before answering (0: answer at once)",
                    settings.VTERM["MAX_WAIT"])
    notify_url = StrictCharField(required=False, allow_null=True, trim_whitespace=False, max_length=NOTIFY_URL_MAX)

    openapi_schema: ClassVar[dict] = {"properties": {
        "command": {"minLength": 1, "maxLength": settings.VTERM["COMMAND_MAX_BYTES"], "pattern": COMMAND_PATTERN,
                    "description": f"At most {settings.VTERM['COMMAND_MAX_BYTES']} bytes in UTF-8, not blank; "
                                   "no control characters but tab, newline and CR LF (keystrokes go to the "
                                   "input endpoint)."},
        "timeout": {"minimum": None, "exclusiveMinimum": 0},  # validate_timeout: 0 is no timeout at all
        "idle_timeout": {"minimum": None, "exclusiveMinimum": 0},
        "notify_url": {"pattern": NOTIFY_URL_PATTERN,
                       "description": "http(s) URL POSTed the command's JSON once it has ended, signed "
                                      "(Standard Webhooks; docs/api.md). Its host must resolve to public "
                                      "addresses only (else 400 naming `notify_url`), unless the server "
                                      "allows it (VTERM_WEBHOOK_ALLOWED_HOSTS)."},
    }}

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

    validate_idle_timeout = validate_timeout
    def validate_notify_url(self, value):
        # The shape only: whether its host may be called is services.command_create's (it looks it up).
        if value is not None and not notify_url_syntax_ok(value):
            raise serializers.ValidationError(
                "Must be an http or https URL: a host name or IP address, an optional port, path and query in "
                "printable ASCII; no user:password@, no #fragment.")
        return value

    def validate_wait(self, value):
        if value is not None and not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number of seconds.")
        return value


def input_data_error(value: str) -> str | None:
    """What is wrong with the `data` of an input (its length in bytes, a NUL), or None."""
    limit = settings.VTERM["INPUT_MAX_BYTES"]
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        return f"Longer than {limit} bytes."
    if "\x00" in value:
        return "May not contain NUL bytes."
    return None


class InputSerializer(serializers.Serializer):
    data = StrictCharField(required=False, trim_whitespace=False, allow_blank=True)
    keys = serializers.ListField(child=StrictCharField(max_length=32), required=False, max_length=256)

    openapi_schema: ClassVar[dict] = {
        "oneOf": [{"required": ["data"]}, {"required": ["keys"]}],  # exactly one of them
        "properties": {
            "data": {"maxLength": settings.VTERM["INPUT_MAX_BYTES"], "pattern": _NO_NUL,
                     "description": f"Keystrokes, literally: at most {settings.VTERM['INPUT_MAX_BYTES']} bytes "
                                    "in UTF-8, no NUL."},
            "keys": {"items": {"pattern": f"^{_SPACE}{KEY_NAME_PATTERN}{_SPACE}$", "maxLength": None},
                     "description": "tmux key names: C-c, M-x, S-Up, Enter, Escape, F5, a single character."},
        },
    }

    def validate_data(self, value: str) -> str:
        error = input_data_error(value)
        if error:
            raise serializers.ValidationError(error)
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
    cols = WholeNumberField(min_value=COLS_RANGE[0], max_value=COLS_RANGE[1])
    rows = WholeNumberField(min_value=ROWS_RANGE[0], max_value=ROWS_RANGE[1])


class ScreenSerializer(serializers.Serializer):
    cols = serializers.IntegerField()
    rows = serializers.IntegerField()
    lines = serializers.ListField(child=StrictCharField(allow_blank=True))
    cursor = serializers.DictField(child=serializers.IntegerField())


# -- the pool (staff): what GET /api/v1/backends/ and /api/v1/pool/ answer, for the schema ---------


class BackendSerializer(serializers.Serializer):
    id = serializers.CharField()
    hostname = serializers.CharField()
    queue = serializers.CharField()
    status = serializers.ChoiceField(["healthy", "draining", "dead"],
                                     help_text="dead also when a healthy one's heartbeat is older than the TTL")
    capacity = serializers.IntegerField()
    sessions = serializers.IntegerField(help_text="live sessions placed on it")
    last_heartbeat = serializers.DateTimeField(allow_null=True)
    heartbeat_age = serializers.FloatField(allow_null=True, help_text="seconds")
    memory_bytes = serializers.FloatField(allow_null=True, help_text="null until its first sample")
    memory_ratio = serializers.FloatField(allow_null=True)
    cpu_ratio = serializers.FloatField(allow_null=True)
    processes = serializers.FloatField(allow_null=True)
    sandbox = serializers.CharField(help_text="how its shells are isolated: off, or e.g. "
                                              "'bubblewrap, cgroup v1, network host' (docs/security.md)")


class PoolMetricsSerializer(serializers.Serializer):
    total_sessions = serializers.IntegerField()
    average_load = serializers.FloatField()
    memory_usage = serializers.FloatField()
    cpu_usage = serializers.FloatField()
    error_rate = serializers.FloatField()


class PoolScalingSerializer(serializers.Serializer):
    action = serializers.ChoiceField(["scale_up", "scale_down", "maintain"])
    target_capacity = serializers.IntegerField()
    target_backends = serializers.IntegerField()
    reason = serializers.CharField()
    confidence = serializers.FloatField()
    recommendations = serializers.ListField(child=serializers.CharField())
    decided_at = serializers.DateTimeField(allow_null=True)


class PoolSerializer(serializers.Serializer):
    capacity = serializers.IntegerField()
    active_backends = serializers.IntegerField()
    available_slots = serializers.IntegerField()
    metrics = PoolMetricsSerializer()
    scaling = PoolScalingSerializer()
