"""Send a message to a session's viewers through the channel layer, from sync or async code.

A backend worker installs a submitter that runs the send on its own event-loop thread
(one channels-redis connection pool, reused), instead of a new loop per message.

Most sessions have no viewer (programs use REST), and a group send to nobody still
costs two Redis round trips. The backend asks Redis whether a session's group exists
in the pipeline that wrote the output (or the result) and sends only then. No frame is
lost to a viewer who joins meanwhile: a viewer joins the group before it reads the
output stream, and the backend writes the stream before it asks, so a viewer either
joined in time for the send or reads the frame from the stream (sessions/consumers.py).

Output frames, the busiest messages, do not go through channels-redis' ``group_send``: it costs
four Redis round trips per message (expire the group, read it, expire the channels' messages, a
Lua script that adds them), on the worker's loop thread. ``ViewerSender`` does the same work in the
backend's output thread, in two pipelines per batch of frames: the group is read where the stream is
written (in place of asking whether it exists), and one Lua script per frame, sent together, adds
the message to each viewer's channel as channels-redis does (same keys, same serialized message,
same capacity and expiry), so the consumers receive it through the channel layer as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from redis.exceptions import NoScriptError

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


# channels-redis' group send script (channels_redis/core.py), with its expiry of old messages folded in:
# KEYS the viewers' channel keys, ARGV their messages, then their capacities, then the time and the expiry.
_SEND_LUA = """
local n = #KEYS
local now = tonumber(ARGV[2 * n + 1])
local expiry = tonumber(ARGV[2 * n + 2])
local over = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, now - expiry)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over = over + 1
    end
end
return over
"""


class ViewerSender:
    """Messages to sessions' viewers from one thread with a sync Redis client, pipelined (see above).

    ``ask`` goes in the pipeline that writes the stream; ``send`` takes its reply (the viewers'
    channels) and the messages, in order. Falls back to ``session_broadcast`` for a channel layer
    spread over several Redis servers (this one writes where the group lives only).
    """

    def __init__(self, client) -> None:
        self.client = client
        self._sha: str | None = None
        self._score = 0.0

    @staticmethod
    def ask(pipe, session_id: str) -> None:
        pipe.zrange(viewers_key(session_id), 0, -1)

    def send(self, sends: list[tuple[str, list[bytes], dict]]) -> None:
        """``sends``: (session id, its viewers' channels as ``ask`` read them, message), in order."""
        layer = get_channel_layer()
        if layer is None or not sends:
            return
        if getattr(layer, "ring_size", 1) != 1:
            for session_id, _, message in sends:
                session_broadcast(session_id, message)
            return
        calls = []
        for _, channels, message in sends:
            _, payloads, capacities = layer._map_channel_keys_to_connection(
                [c.decode() if isinstance(c, bytes) else c for c in channels], message)
            keys = list(payloads)
            # The channel is a sorted set read lowest score first: frames sent together must not tie.
            self._score = max(time.time(), self._score + 1e-6)
            calls.append((len(keys), *keys, *(payloads[k] for k in keys), *(capacities[k] for k in keys),
                          repr(self._score), layer.expiry))
        try:
            self._run(calls)
        except NoScriptError:  # Redis restarted or its scripts were flushed: no call ran, all run again
            self._sha = None
            self._run(calls)

    def _run(self, calls: list[tuple]) -> None:
        # EVALSHA by hand: a pipeline given a registered Script asks SCRIPT EXISTS first, every time.
        if self._sha is None:
            self._sha = self.client.script_load(_SEND_LUA)
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(self._sha, *args)
        pipe.execute()
