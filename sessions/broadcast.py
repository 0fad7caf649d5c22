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
backend's output thread, in the one pipeline that writes the stream while a session's viewers stay
the same: one Lua script per frame adds the message to each viewer's channel as channels-redis does
(same keys, same serialized message, same capacity and expiry), so the consumers receive it through
the channel layer as before, and the group is read again after the stream's writes (in place of
asking whether it exists), so that a viewer who joined meanwhile is sent the frames too.
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
KNOWN_MAX = 10_000  # sessions whose viewers a sender remembers; one forgotten costs a round trip


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

    In the pipeline that writes the stream, ``send_known`` adds the messages to the viewers each session
    had when it was last read, and ``ask`` reads them again after the stream's writes; ``send_rest`` then
    takes what that read found and sends to the viewers who joined since (their first batch costs a second
    round trip). A viewer gone since gets one batch more in a channel no one reads, which expires. Falls
    back to ``session_broadcast`` for a channel layer spread over several Redis servers (this one writes
    where the group lives only).
    """

    def __init__(self, client) -> None:
        self.client = client
        self._sha: str | None = None
        self._score = 0.0
        self._known: dict[str, set[bytes]] = {}  # session -> its viewers' channels, as last read

    @staticmethod
    def ask(pipe, session_id: str) -> None:
        pipe.zrange(viewers_key(session_id), 0, -1)

    def send_known(self, pipe, sends: list[tuple[str, dict]]) -> list[tuple]:
        """Add to ``pipe`` ``sends`` ((session id, message), in order) for each session's known viewers;
        returns the script calls added, for ``send_rest``."""
        layer = _layer_to_write()
        if layer is None:
            return []
        calls = [self._call(layer, self._known[sid], message) for sid, message in sends if self._known.get(sid)]
        if calls:
            sha = self._sha or self._load()
            for args in calls:
                pipe.evalsha(sha, *args)
        return calls

    def send_rest(self, sends: list[tuple[str, dict]], viewers: dict[str, list[bytes]], calls: list[tuple],
                  answers: list) -> None:
        """After the pipeline: ``viewers`` is each session's channels as ``ask`` read them, ``calls`` and
        ``answers`` what ``send_known`` added and Redis said of them. Sends to the viewers not known
        before, and again any call whose script Redis had lost (restarted, flushed)."""
        if _layer_to_write() is None:
            for session_id, message in sends:
                if viewers.get(session_id):
                    session_broadcast(session_id, message)
            return
        layer = get_channel_layer()
        again = [args for args, answer in zip(calls, answers) if isinstance(answer, NoScriptError)]
        if again:
            self._sha = None
        joined = {}
        for session_id, channels in viewers.items():
            now = set(channels)
            joined[session_id] = now - self._known.get(session_id, set())
            if now:
                self._known[session_id] = now
            else:
                self._known.pop(session_id, None)
        while len(self._known) > KNOWN_MAX:  # sessions that ended watched are never read again
            del self._known[next(iter(self._known))]
        again += [self._call(layer, joined[sid], message) for sid, message in sends if joined.get(sid)]
        if again:
            try:
                self._run(again)
            except NoScriptError:  # lost between the two: no call ran, all run again
                self._sha = None
                self._run(again)

    def _call(self, layer, channels, message: dict) -> tuple:
        _, payloads, capacities = layer._map_channel_keys_to_connection(
            [c.decode() if isinstance(c, bytes) else c for c in channels], message)
        keys = list(payloads)
        # The channel is a sorted set read lowest score first: frames sent together must not tie.
        self._score = max(time.time(), self._score + 1e-6)
        return (len(keys), *keys, *(payloads[k] for k in keys), *(capacities[k] for k in keys),
                repr(self._score), layer.expiry)

    def _load(self) -> str:
        self._sha = self.client.script_load(_SEND_LUA)
        return self._sha

    def _run(self, calls: list[tuple]) -> None:
        # EVALSHA by hand: a pipeline given a registered Script asks SCRIPT EXISTS first, every time.
        sha = self._sha or self._load()
        pipe = self.client.pipeline(transaction=False)
        for args in calls:
            pipe.evalsha(sha, *args)
        pipe.execute()


def _layer_to_write():
    """The channel layer, when this sender writes its channels itself (one Redis server); else None."""
    layer = get_channel_layer()
    if layer is None or getattr(layer, "ring_size", 1) != 1:
        return None
    return layer
