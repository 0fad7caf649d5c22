"""Send a message to a session's viewers through the channel layer, from sync or async code.

A backend worker installs a submitter that runs the send on its own event-loop thread
(one channels-redis connection pool, reused), instead of a new loop per message.
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


def session_broadcast(session_id: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    coro_fn = layer.group_send
    if _submit is not None:
        _submit(coro_fn(session_group(str(session_id)), message))
    else:
        async_to_sync(coro_fn)(session_group(str(session_id)), message)
