"""Replies on Redis lists, and waiting for them without holding a Redis connection per wait.

A web process waits on many replies at once: REST commands with ``wait``, WebSocket ``run``
frames, session starts, screens. Each wait used to BLPOP its own list and so held a pooled
connection for as long as it waited: one user's waits could take every connection of the
process, and everyone else got 503s (issue 14). Now whoever pushes a reply also PUBLISHes
the list's name on one channel (with the reply itself when it is small), and each process has
one subscriber (one connection) that hands the replies of the lists someone waits on to their
waiters: the one in the notice, or taken from the list (one pipelined LPOP for all the names
that came together). A wait costs a future, not a connection.

A reply can come before its wait begins (a fast command): the subscriber remembers the lists
announced in the last RECHECK seconds, and a wait for one of them takes from it at once. A
notice can be missed (it is not stored: the subscriber was reconnecting), so waits that begin
soon after a (re)subscription take from their list once too, and the subscriber takes from
every list waited on when it (re)subscribes and every RECHECK seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict

from .redis_state import async_client, reply_channel

log = logging.getLogger(__name__)

RECHECK = 5.0  # seconds between looks at every list waited on, in case a notice was lost
RETRY = 0.5  # seconds before the subscriber subscribes again after losing Redis
TAKE_BATCH = 500  # lists taken from in one pipeline
NOTICE_MAX = 4096  # characters of a reply sent with its notice
FRESH_WINDOW = 1.0  # seconds after a (re)subscription in which every new wait looks at its list once
RECENT_MAX = 100_000  # lists announced lately, remembered for a wait that begins after its reply


def reply_push(pipe, key: str, payload: dict | str, ttl: int) -> None:
    """Add, on ``pipe`` (a pipeline: one round trip with the caller's other writes), a reply
    to list ``key`` and the notice that wakes whoever waits on it."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    pipe.rpush(key, data)
    pipe.expire(key, ttl)
    # A small reply rides on its notice too: its waiter then needs no LPOP (the list is unlinked after).
    pipe.publish(reply_channel(), f"{key}\n{data}" if len(data) <= NOTICE_MAX else key)


class _Subscriber:
    """The one subscription of this event loop, and the futures waiting on each list."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.waiting: dict[str, set[asyncio.Future]] = {}
        # Lists announced lately that no one here waited on yet: a wait that begins after its reply
        # came (a fast command) finds it here, and only such a wait costs a look at its list.
        self._recent: OrderedDict[str, float] = OrderedDict()
        self._subscribed_at: float | None = None
        self._fresh: set[str] = set()  # lists to take from once, together
        self._fresh_added = asyncio.Event()
        self._unlinks: set[asyncio.Task] = set()
        self.task = loop.create_task(self._run(), name="vterm-reply-subscriber")
        self._checker = loop.create_task(self._check_fresh(), name="vterm-reply-checker")
        self.task.add_done_callback(lambda _: self._checker.cancel())

    def watch(self, key: str) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.waiting.setdefault(key, set()).add(fut)
        # Notices are not stored: until the subscription has been up a while, one may have gone by.
        if key in self._recent or self._subscribed_at is None or loop.time() - self._subscribed_at < FRESH_WINDOW:
            self._fresh.add(key)
            self._fresh_added.set()
        return fut

    def unwatch(self, key: str, fut: asyncio.Future) -> None:
        futs = self.waiting.get(key)
        if futs is not None:
            futs.discard(fut)
            if not futs:
                del self.waiting[key]

    def _heard(self, notices: dict[str, bytes]) -> list[str]:
        """Hand over the replies that came with their notices; the lists just announced that someone
        waits on and whose reply must be taken from Redis; the others are remembered a while."""
        now = asyncio.get_running_loop().time()
        waited, handed = [], []
        for key, reply in notices.items():
            if key not in self.waiting:
                self._recent[key] = now
                self._recent.move_to_end(key)
            elif reply and self._hand_over(key, reply):
                handed.append(key)
            else:
                waited.append(key)
        if handed:  # their lists hold the same replies: gone, off the waiters' way
            task = asyncio.get_running_loop().create_task(self._unlink(handed))
            self._unlinks.add(task)
            task.add_done_callback(self._unlinks.discard)
        while self._recent and (len(self._recent) > RECENT_MAX or next(iter(self._recent.values())) < now - RECHECK):
            self._recent.popitem(last=False)
        return waited

    def _hand_over(self, key: str, reply: bytes) -> bool:
        """One reply, one waiter; False when none is left (it gave up just now)."""
        for fut in self.waiting.get(key, ()):
            if not fut.done():
                fut.set_result(reply)
                return True
        return False

    @staticmethod
    async def _unlink(keys: list[str]) -> None:
        try:
            await async_client().unlink(*keys)
        except Exception:  # they expire anyway (REPLY_TTL)
            log.debug("reply subscriber: could not unlink %d lists", len(keys), exc_info=True)

    async def _take(self, keys) -> None:
        """LPOP the lists of ``keys`` that someone waits on (many in pipelines) and hand the replies over."""
        keys = [k for k in keys if k in self.waiting]
        for i in range(0, len(keys), TAKE_BATCH):
            chunk = keys[i:i + TAKE_BATCH]
            if len(chunk) == 1:
                got_all = [await async_client().lpop(chunk[0])]
            else:
                pipe = async_client().pipeline(transaction=False)
                for key in chunk:
                    pipe.lpop(key)
                got_all = await pipe.execute()
            for key, got in zip(chunk, got_all):
                if got is not None:
                    self._hand_over(key, got)  # with no waiter left, the reply goes unread

    async def _check_fresh(self) -> None:
        """Take once from the lists whose wait began after their reply may have come."""
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
                self._subscribed_at = swept = loop.time()
                await self._take(list(self.waiting))  # what was pushed while no one listened
                while True:
                    notices: dict[str, bytes] = {}
                    msg = await pubsub.get_message(timeout=RECHECK)
                    while msg is not None and len(notices) < TAKE_BATCH:  # and whatever came with it
                        if msg["type"] == "message":
                            key, _, reply = msg["data"].partition(b"\n")
                            notices[key.decode()] = reply
                        msg = await pubsub.get_message(timeout=0)
                    waited = self._heard(notices)
                    if loop.time() - swept >= RECHECK:
                        swept = loop.time()
                        waited = list(self.waiting)
                    await self._take(waited)
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis gone or restarted: subscribe again
                self._subscribed_at = None
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
