"""Send a message to a session's viewers through the channel layer, from sync or async code.

A backend worker installs a submitter that runs the send on its own event-loop thread
(one channels-redis connection pool, reused), instead of a new loop per message.

Most sessions have no viewer (programs use REST), and a group send to nobody still
costs two Redis round trips. The backend asks Redis whether a session's group exists
in the pipeline that wrote the output (or the result) and sends only then. No frame is
lost to a viewer who joins meanwhile: a viewer joins the group before it reads the
output stream, and the backend writes the stream before it asks, so a viewer either
joined in time for the send or reads the frame from the stream (sessions/consumers.py).
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from .redis_state import session_group

_submit: Callable[[Coroutine], Any] | None = None


def install_submitter(submit: Callable[[Coroutine], Any]) -> None:
    global _submit
    _submit = submit


def viewers_key(session_id: str) -> bytes:
    """The Redis key of the session's group: channels-redis keeps it as a sorted set of the
    viewers' channels, and Redis drops it with its last member."""
    return get_channel_layer()._group_key(session_group(str(session_id)))  # its own naming, prefix included


def session_broadcast(session_id: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    coro_fn = layer.group_send
    if _submit is not None:
        _submit(coro_fn(session_group(str(session_id)), message))
    else:
        async_to_sync(coro_fn)(session_group(str(session_id)), message)
