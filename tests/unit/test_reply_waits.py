"""Waiting for a reply on a Redis list through the process's one subscriber (sessions/waits.py),
against a real Redis: a reply pushed before or after the wait begins is handed over, many
waits hold one connection between them, and a wait with no reply ends with None."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from sessions import waits
from sessions.redis_state import async_client, sync_client
from tests.unit.test_failover_reconcile import live_redis  # noqa: F401 (fixture)


def _push(key: str, payload: dict) -> None:
    pipe = sync_client().pipeline()
    waits.reply_push(pipe, key, payload, 60)
    pipe.execute()


@pytest.mark.django_db
def test_replies_reach_their_waiters_and_waits_hold_no_connection(live_redis):  # noqa: F811
    async def scenario():
        prefix = uuid.uuid4().hex
        early = f"{prefix}:early"
        _push(early, {"n": 0})  # before anyone waits: taken when the wait starts
        assert await waits.reply_wait(early, 5) == b'{"n": 0}'

        keys = [f"{prefix}:{i}" for i in range(300)]
        tasks = [asyncio.create_task(waits.reply_wait(k, 30)) for k in keys]
        await asyncio.sleep(0.5)  # all 300 are waiting now
        pool = async_client().connection_pool
        in_use = len(pool._in_use_connections)
        assert in_use <= 2, f"{in_use} connections held by 300 waits"
        for i, k in enumerate(keys):
            _push(k, {"n": i})
        got = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert got == [f'{{"n": {i}}}'.encode() for i in range(300)]

        assert await waits.reply_wait(f"{prefix}:none", 0.2) is None
        waits._subscriber().task.cancel()
    asyncio.run(scenario())


@pytest.mark.django_db
def test_a_reply_that_comes_before_its_wait_is_found_without_the_periodic_look(live_redis, monkeypatch):  # noqa: F811
    """Long after the subscription began (no look at every list for 30 s here), a reply pushed
    before anyone waits on it is remembered by its notice and handed to the wait that follows."""
    monkeypatch.setattr(waits, "RECHECK", 30.0)

    async def scenario():
        sub = waits._subscriber()
        assert await waits.reply_wait(f"{uuid.uuid4().hex}:warm", 0.5) is None  # subscribed by now
        sub._subscribed_at -= 60  # as if long ago
        key = f"{uuid.uuid4().hex}:fast"
        _push(key, {"fast": True})
        await asyncio.sleep(0.2)  # the notice has come, with no one waiting
        assert await waits.reply_wait(key, 2) == b'{"fast": true}'
        sub.task.cancel()
    asyncio.run(scenario())
