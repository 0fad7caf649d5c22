"""Per-user limits that every web node shares: a token bucket in Redis, the session quota,
and the cap on open WebSockets.

The bucket lives in one Redis hash per (user, kind) and is updated by one Lua script, so
two web nodes (or two requests on one) can never both spend the last token. Time comes
from Redis (``TIME``), not from the nodes' clocks. Open WebSockets are claims in one sorted
set per user, taken by a Lua script too; each claim lapses unless its web node renews it,
so the places of a node that died come free by themselves.
"""

from __future__ import annotations

import math

from django.conf import settings
from rest_framework.exceptions import Throttled

from .redis_state import async_client, sync_client, ws_open_key

# KEYS[1] bucket; ARGV rate (tokens/s), burst, cost. Returns {allowed, seconds to wait}.
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(wait)}
"""

_script = None


def _bucket_script():
    global _script
    if _script is None:
        _script = sync_client().register_script(_TOKEN_BUCKET)
    return _script


def bucket_key(user_id, kind: str) -> str:
    return f"{settings.VTERM['REDIS_PREFIX']}vterm:rl:{kind}:{user_id}"


def ratelimit_take(user_id, kind: str, cost: float = 1.0) -> float:
    """Spend ``cost`` tokens of the user's ``kind`` bucket: 0 when allowed, else seconds to wait.

    ``kind`` is "command", "input", "resize", "interrupt", "screen" or "recording"; its rate
    and burst are VTERM_<KIND>_RATE / _BURST (a rate of 0 turns the limit off).
    """
    rate = float(settings.VTERM[f"{kind.upper()}_RATE"])
    burst = float(settings.VTERM[f"{kind.upper()}_BURST"])
    if rate <= 0:
        return 0.0
    allowed, wait = _bucket_script()(keys=[bucket_key(user_id, kind)], args=[rate, max(burst, cost), cost])
    return 0.0 if int(allowed) else float(wait)


def ratelimit_check(user_id, kind: str, cost: float = 1.0) -> None:
    """Raise 429 (with Retry-After) when the user is over their ``kind`` rate."""
    wait = ratelimit_take(user_id, kind, cost)
    if wait > 0:
        raise Throttled(wait=max(1, math.ceil(wait)),
                        detail=f"Too many {kind} requests for this user; try again in {math.ceil(wait)} s.")


def session_quota_check(owner) -> None:
    """Raise 429 when ``owner`` already has their maximum of live sessions (staff included).

    Call inside the transaction that creates the session, after locking the owner's row,
    so that two web nodes cannot both create the last allowed one.
    """
    from .models import TerminalSession

    limit = settings.VTERM["MAX_SESSIONS_PER_USER"]
    if limit <= 0:
        return
    live = TerminalSession.objects.filter(owner=owner, status__in=TerminalSession.LIVE).count()
    if live >= limit:
        raise Throttled(wait=settings.VTERM["QUOTA_RETRY_AFTER"],
                        detail=f"You have {live} live sessions, the most allowed per user ({limit}); "
                               "end one first.")


# KEYS[1] the user's open WebSockets; ARGV max, claim seconds, member. 1 when claimed, else 0.
_WS_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""
# KEYS the users' sets; ARGV claim seconds, then one member per key: the connections are open,
# so their claims are renewed (or made again, had they lapsed while this node was stalled).
_WS_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[1])) + 1)
end
return 0
"""


async def ws_claim(user_id, member: str) -> int:
    """Claim one of the user's places for an open WebSocket: 0 when claimed (or no cap is set),
    else the cap (VTERM_WS_MAX_PER_USER) that is already reached."""
    limit = settings.VTERM["WS_MAX_PER_USER"]
    if limit <= 0:
        return 0
    got = await async_client().eval(_WS_CLAIM, 1, ws_open_key(user_id), limit, settings.VTERM["WS_CLAIM_SECONDS"],
                                     member)
    return 0 if int(got) else limit


async def ws_claims_renew(claims: list[tuple[object, str]]) -> None:
    """Renew the claims ``(user_id, member)`` of this node's open WebSockets, in one call."""
    if not claims or settings.VTERM["WS_MAX_PER_USER"] <= 0:
        return
    await async_client().eval(_WS_RENEW, len(claims), *[ws_open_key(u) for u, _ in claims],
                              settings.VTERM["WS_CLAIM_SECONDS"], *[m for _, m in claims])


async def ws_release(user_id, member: str) -> None:
    await async_client().zrem(ws_open_key(user_id), member)
