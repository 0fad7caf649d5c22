"""Validation of the frames a WebSocket client sends, reusing the REST serializers where they fit."""

from __future__ import annotations

from rest_framework import serializers

from .serializers import CommandCreateSerializer, InputSerializer, ResizeSerializer, StrictCharField

__all__ = ["AckFrameSerializer", "InputSerializer", "ResizeSerializer", "RunFrameSerializer"]


class StrictIntegerField(serializers.IntegerField):
    """An integer, and only an integer: not "5", 5.0 or true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class RunFrameSerializer(CommandCreateSerializer):
    """`{"type": "run", "command", "ref"?, "timeout"?, "idle_timeout"?, "notify_url"?}`: the REST command body
    plus the client's ref."""

    ref = StrictCharField(required=False, max_length=200, allow_blank=True, trim_whitespace=False)


class AckFrameSerializer(serializers.Serializer):
    seq = StrictIntegerField(min_value=0)
