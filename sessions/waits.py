"""Replies on Redis lists, and waiting for them without holding a Redis connection per wait.

A web process waits on many replies at once: REST commands with ``wait``, WebSocket ``run``
frames, session starts, screens. Each wait used to BLPOP its own list and so held a pooled
connection for as long as it waited: one user's waits could take every connection of the
process, and everyone else got 503s (issue 14). Now whoever pushes a reply also PUBLISHes
the list's name on one channel, and each process has one subscriber (one connection) that
takes the replies of the lists someone waits on (one pipelined LPOP for all the names that
came together) and hands each to its waiter. A wait costs a future, not a connection.

A notice can be missed (it is not stored: the subscriber was reconnecting, or the reply came
before the wait began), so the subscriber also takes from each list once when its wait begins
(all those that began together in one pipeline), and from every list waited on when it
(re)subscribes and every RECHECK seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from .redis_state import async_client, reply_channel

log = logging.getLogger(__name__)

RECHECK = 5.0  # seconds between looks at every list waited on, in case a notice was lost
RETRY = 0.5  # seconds before the subscriber subscribes again after losing Redis
TAKE_BATCH = 500  # lists taken from in one pipeline


def reply_push(pipe, key: str, payload: dict | str, ttl: int) -> None:
    """Add, on ``pipe`` (a pipeline: one round trip with the caller's other writes), a reply
    to list ``key`` and the notice that wakes whoever waits on it."""
    pipe.rpush(key, payload if isinstance(payload, str) else json.dumps(payload))
    pipe.expire(key, ttl)
    pipe.publish(reply_channel(), key)


class _Subscriber:
    """The one subscription of this event loop, and the futures waiting on each list."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.waiting: dict[str, set[asyncio.Future]] = {}
        self._fresh: set[str] = set()  # lists whose waits just began: taken from once, together
        self._fresh_added = asyncio.Event()
        self.task = loop.create_task(self._run(), name="vterm-reply-subscriber")
        self._checker = loop.create_task(self._check_fresh(), name="vterm-reply-checker")
        self.task.add_done_callback(lambda _: self._checker.cancel())

    def watch(self, key: str) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, set()).add(fut)
        self._fresh.add(key)
        self._fresh_added.set()
        return fut

    def unwatch(self, key: str, fut: asyncio.Future) -> None:
        futs = self.waiting.get(key)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self.waiting[key]

    async def _take(self, keys) -> None:
        """LPOP the lists of ``keys`` that someone waits on, in pipelines, and hand the replies over."""
        keys = [k for k in keys if k in self.waiting]
        for i in range(0, len(keys), TAKE_BATCH):
            chunk = keys[i:i + TAKE_BATCH]
            pipe = async_client().pipeline(transaction=False)
            for key in chunk:
                pipe.lpop(key)
            for key, got in zip(chunk, await pipe.execute()):
                if got is None:
                    continue
                # One reply, one waiter; with none left (it gave up just now) the reply goes unread.
                for fut in self.waiting.get(key, ()):
                    if not fut.done():
                        fut.set_result(got)
                        break

    async def _check_fresh(self) -> None:
        """A reply may have come before its wait began (a fast command): take from new lists once,
        all those that began meanwhile in one pipeline."""
        while True:
            await self._fresh_added.wait()
            self._fresh_added.clear()
            keys, self._fresh = self._fresh, set()
            try:
                await self._take(keys)
            except Exception:  # the periodic look at every list waited on tries again
                log.warning("reply subscriber: could not take %d new lists", len(keys), exc_info=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pubsub = async_client(blocking=True).pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(reply_channel())
                swept = loop.time()
                await self._take(list(self.waiting))  # what was pushed while no one listened
                while True:
                    keys = set()
                    msg = await pubsub.get_message(timeout=RECHECK)
                    while msg is not None and len(keys) < TAKE_BATCH:  # and whatever came with it
                        if msg["type"] == "message":
                            keys.add(msg["data"].decode())
                        msg = await pubsub.get_message(timeout=0)
                    if loop.time() - swept >= RECHECK:
                        swept = loop.time()
                        keys.update(self.waiting)
                    await self._take(keys)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis gone or restarted: subscribe again
                log.warning("reply subscriber: Redis unavailable; subscribing again", exc_info=True)
                await asyncio.sleep(RETRY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()


_subscribers: dict[int, _Subscriber] = {}


def _subscriber() -> _Subscriber:
    loop = asyncio.get_running_loop()
    sub = _subscribers.get(id(loop))
    if sub is None or sub.task.done() or sub.task.get_loop() is not loop:  # an id reused by a new loop
        sub = _subscribers[id(loop)] = _Subscriber()
    return sub


async def reply_wait(key: str, timeout: float) -> bytes | None:
    """The first reply on list ``key``, or None after ``timeout`` seconds (Redis not answering
    meanwhile included: the caller then reads what the database says)."""
    sub = _subscriber()
    fut = sub.watch(key)
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError:
        return None
    finally:
        sub.unwatch(key, fut)
