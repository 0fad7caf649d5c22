"""The open WebSockets of this web process, looked at again every few seconds.

Each connection's user must still be allowed in: active, the token it opened with still
there, the login (cookie) still valid. One that is not is closed with 4401 within
VTERM_WS_RECHECK_INTERVAL seconds. The same round renews the connections' claims under the
per-user cap (sessions/ratelimit.py ``ws_claim``). One loop for all of a process' connections:
one query for all the tokens in use and one Redis call for all the claims, not one each.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from .ratelimit import ws_claims_renew
from .ws_auth import credentials_revoked

log = logging.getLogger(__name__)


class Watched(Protocol):
    channel_name: str

    def credentials(self) -> tuple[int, str | None, str | None]: ...  # (user id, token, session key)

    async def revoked(self) -> None: ...


_open: dict[str, Watched] = {}  # channel name -> connection
_task: asyncio.Task | None = None


def ws_watch(conn: Watched) -> None:
    global _task
    _open[conn.channel_name] = conn
    if _task is None or _task.done():
        _task = asyncio.get_running_loop().create_task(_watch_loop())


def ws_unwatch(conn: Watched) -> None:
    _open.pop(conn.channel_name, None)


async def _watch_loop() -> None:
    while _open:
        await asyncio.sleep(settings.VTERM["WS_RECHECK_INTERVAL"])
        try:
            await ws_watch_round()
        except Exception:  # the loop must outlive any one round
            log.exception("WebSocket re-check round failed")


async def ws_watch_round() -> None:
    conns = list(_open.values())
    if not conns:
        return
    creds = [c.credentials() for c in conns]
    try:
        await ws_claims_renew([(user_id, c.channel_name) for c, (user_id, _, _) in zip(conns, creds, strict=True)])
    except RedisError as exc:
        log.warning("could not renew the WebSocket claims: %s", exc)
    try:
        revoked = await database_sync_to_async(credentials_revoked)(creds)
    except DatabaseError as exc:
        log.warning("could not re-check the WebSocket users: %s", exc)
        return
    for i in revoked:
        if conns[i].channel_name in _open:
            await conns[i].revoked()
