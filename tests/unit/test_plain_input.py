"""The keystroke fast path (ws_serializers.plain_input) takes exactly what InputSerializer takes as it
is, and leaves every other frame to the serializer and its named error."""

import pytest
from django.conf import settings

from sessions.ws_serializers import InputSerializer, plain_input

LIMIT = settings.VTERM["INPUT_MAX_BYTES"]

FRAMES = [
    {"type": "input", "data": "x"},
    {"type": "input", "data": "echo hi\r"},
    {"type": "input", "data": ""},
    {"type": "input", "data": " \t "},
    {"type": "input", "data": "é€😀"},
    {"type": "input", "data": "x" * LIMIT},
    {"type": "input", "data": "€" * (LIMIT // 3)},
    {"type": "input", "data": "x" * (LIMIT + 1)},
    {"type": "input", "data": "€" * (LIMIT // 3 + 1)},
    {"type": "input", "data": "a\x00b"},
    {"type": "input", "data": "\ud800"},
    {"type": "input", "data": 5},
    {"type": "input", "data": True},
    {"type": "input", "data": None},
    {"type": "input", "data": ["a"]},
    {"type": "input", "data": "a", "keys": ["Enter"]},
    {"type": "input", "keys": ["C-c"]},
    {"type": "input"},
    {"type": "input", "data": "a", "extra": 1},
]


@pytest.mark.parametrize("frame", FRAMES, ids=range(len(FRAMES)))
def test_the_fast_path_agrees_with_the_serializer(frame):
    ser = InputSerializer(data={k: v for k, v in frame.items() if k != "type"})
    taken_as_is = (ser.is_valid() and set(ser.validated_data) == {"data"}
                   and ser.validated_data["data"] == frame["data"])
    fast = plain_input(frame)
    if taken_as_is:
        assert fast == frame["data"]
    else:
        assert fast is None  # to the serializer, which names what is wrong (or takes keys)
