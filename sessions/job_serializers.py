"""The JSON of background jobs (docs/api.md, "Jobs") and the validation of what starts one."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from rest_framework import serializers

from .models import Job
from .serializers import CommandCreateSerializer, NumberField, StrictCharField


class JobSerializer(serializers.ModelSerializer):
    session = serializers.UUIDField(source="session_id", read_only=True)

    class Meta:
        model = Job
        fields = ["id", "session", "command", "status", "reason", "pid", "exit_code", "timeout", "cwd",
                  "output_truncated", "started_at", "ended_at"]
        read_only_fields = fields


class JobCreateSerializer(serializers.Serializer):
    """A job's command is checked as a command's is."""

    command = StrictCharField(trim_whitespace=False, allow_blank=False)
    timeout = NumberField(required=False, allow_null=True, min_value=0, max_value=settings.VTERM["MAX_TIMEOUT"],
                          help_text="seconds; then the job and everything it started are killed (timed_out)")

    openapi_schema: ClassVar[dict] = {"properties": {
        k: v for k, v in CommandCreateSerializer.openapi_schema["properties"].items() if k in ("command", "timeout")}}
    validate_command = CommandCreateSerializer.validate_command
    validate_timeout = CommandCreateSerializer.validate_timeout


class JobOutputSerializer(serializers.Serializer):
    output = serializers.CharField(allow_blank=True, help_text="the output from `offset` on (UTF-8)")
    offset = serializers.IntegerField(help_text="where it starts, in bytes of the job's UTF-8 output")
    next_offset = serializers.IntegerField(help_text="the offset to ask for next")
    eof = serializers.BooleanField(help_text="the job has ended and there is no more output")
