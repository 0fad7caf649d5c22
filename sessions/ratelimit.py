"""Per-user limits that every web node shares: token buckets in Redis, the pending waits, the
session quota, and the cap on open WebSockets.

A bucket lives in one Redis hash per (user, kind) and is updated by one Lua script, so
two web nodes (or two requests on one) can never both spend the last token. Time comes
from Redis (``TIME``), not from the nodes' clocks. Pending waits are a sorted set per user
of the waits under way, each with the time it gives up by: a web node that dies with waits
under way does not hold them for ever. Open WebSockets are claims in one sorted set per user,
taken by a Lua script too; each claim lapses unless its web node renews it, so the places of
a node that died come free by themselves.
"""

from __future__ import annotations

import contextlib
import math
import uuid

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.exceptions import Throttled

from .redis_state import async_client, sync_client, ws_open_key

# One token bucket (a hash: tokens, ts), shared by the scripts below: spend ``cost`` if it is there.
# Returns {1, 0} when spent, else {0, seconds until it would be}; the refill is stored either way.
_BUCKET_SPEND = """
local function bucket_spend(key, rate, burst, cost, now)
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1])
  local ts = tonumber(b[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
  local allowed, wait = 0, 0
  if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
  else
    wait = (cost - tokens) / rate
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return allowed, wait
end
"""

# KEYS: buckets; ARGV: rate (tokens/s), burst, cost for each in turn. Returns {allowed, seconds
# to wait} for each: each bucket is spent on its own, all in one round trip.
_TOKEN_BUCKET = _BUCKET_SPEND + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local allowed, wait = bucket_spend(key, tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]),
                                     tonumber(ARGV[3 * i]), now)
  out[#out + 1] = allowed
  out[#out + 1] = tostring(wait)
end
return out
"""

# A command's admission. KEYS[1] the owner's command bucket, KEYS[2] the waiter's pending waits.
# ARGV rate, burst, cost (rate 0: no bucket), wait limit (0: no wait counted), wait id, seconds
# it may last. Returns {token spent, seconds to wait for one, waits full}; waits are looked at
# first, so that a refused wait spends no token.
_COMMAND_ADMIT = _BUCKET_SPEND + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local limit = tonumber(ARGV[4])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= limit then
    return {0, '0', 1}
  end
end
local rate = tonumber(ARGV[1])
if rate > 0 then
  local allowed, wait = bucket_spend(KEYS[1], rate, tonumber(ARGV[2]), tonumber(ARGV[3]), now)
  if allowed == 0 then
    return {0, tostring(wait), 0}
  end
end
if limit > 0 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5])
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', KEYS[2], math.ceil(tonumber(last[2]) * 1000) + 1000)
end
return {1, '0', 0}
"""

# Keystrokes from a WebSocket: _TOKEN_BUCKET's spends, then, only when every bucket allowed them,
# RPUSH of ARGV[#ARGV] to KEYS[#KEYS] (the backend's inbox): admission and delivery in one round trip.
_INPUT_ADMIT = _BUCKET_SPEND + """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
local all = 1
for i = 1, #KEYS - 1 do
  local allowed, wait = bucket_spend(KEYS[i], tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1]),
                                     tonumber(ARGV[3 * i]), now)
  out[#out + 1] = allowed
  out[#out + 1] = tostring(wait)
  if allowed == 0 then all = 0 end
end
if all == 1 then
  redis.call('RPUSH', KEYS[#KEYS], ARGV[#ARGV])
end
return out
"""

_scripts: dict[str, object] = {}


def _script(source: str):
    if source not in _scripts:
        _scripts[source] = sync_client().register_script(source)
    return _scripts[source]


def _bucket_script():
    return _script(_TOKEN_BUCKET)


def bucket_key(user_id, kind: str) -> str:
    return f"{settings.VTERM['REDIS_PREFIX']}vterm:rl:{kind}:{user_id}"


def pending_waits_key(user_id) -> str:
    return f"{settings.VTERM['REDIS_PREFIX']}vterm:waits:{user_id}"


def _bucket_args(kind: str, cost: float) -> list[float] | None:
    rate = float(settings.VTERM[f"{kind.upper()}_RATE"])
    burst = float(settings.VTERM[f"{kind.upper()}_BURST"])
    return None if rate <= 0 else [rate, max(burst, cost), cost]


def ratelimit_take(user_id, kind: str, cost: float = 1.0) -> float:
    """Spend ``cost`` tokens of the user's ``kind`` bucket: 0 when allowed, else seconds to wait.

    ``kind`` is "command", "input", "input_bytes", "resize", "interrupt", "screen" or "recording";
    its rate and burst are VTERM_<KIND>_RATE / _BURST (a rate of 0 turns the limit off). A cost
    above the burst is allowed from a full bucket.
    """
    args = _bucket_args(kind, cost)
    if args is None:
        return 0.0
    allowed, wait = _bucket_script()(keys=[bucket_key(user_id, kind)], args=args)
    return 0.0 if int(allowed) else float(wait)


def ratelimit_check(user_id, kind: str, cost: float = 1.0) -> None:
    """Raise 429 (with Retry-After) when the user is over their ``kind`` rate."""
    _raise_if_over(kind, ratelimit_take(user_id, kind, cost))


def ratelimit_check_input(user_id, nbytes: int) -> None:
    """Keystrokes spend two buckets in one round trip: one request ("input") and their bytes
    ("input_bytes"). Raise 429 when either is empty (the request is spent either way)."""
    spends = _input_spends(nbytes)
    if spends:
        _input_verdict(spends, _bucket_script()(keys=[bucket_key(user_id, kind) for kind, _ in spends],
                                                args=[a for _, args in spends for a in args]))


async def ratelimit_check_input_async(user_id, nbytes: int, push: tuple[str, str] | None = None) -> None:
    """``ratelimit_check_input`` from the event loop (a WebSocket's keystrokes), with no thread between.
    ``push``: (list, message) to RPUSH in the same round trip when the keystrokes are admitted."""
    spends = _input_spends(nbytes)
    keys = [bucket_key(user_id, kind) for kind, _ in spends]
    args = [a for _, args in spends for a in args]
    if push is not None:
        got = await async_client().eval(_INPUT_ADMIT, len(keys) + 1, *keys, push[0], *args, push[1])
    elif spends:
        got = await async_client().eval(_TOKEN_BUCKET, len(keys), *keys, *args)
    else:
        return
    _input_verdict(spends, got)


def _input_spends(nbytes: int) -> list[tuple[str, list[float]]]:
    return [(kind, args) for kind, args in (("input", _bucket_args("input", 1.0)),
                                            ("input_bytes", _bucket_args("input_bytes", float(nbytes))))
            if args is not None and args[2] > 0]


def _input_verdict(spends: list[tuple[str, list[float]]], got: list) -> None:
    for n, (kind, _) in enumerate(spends):
        if not int(got[2 * n]):
            _raise_if_over(kind, float(got[2 * n + 1]))


def _raise_if_over(kind: str, wait: float) -> None:
    if wait > 0:
        what = "input bytes" if kind == "input_bytes" else f"{kind} requests"
        raise Throttled(wait=max(1, math.ceil(wait)),
                        detail=f"Too many {what} for this user; try again in {math.ceil(wait)} s.")


WAIT_MARGIN = 30.0  # seconds a pending wait is counted past its own end (submission, a slow answer)


def command_admit(owner_id, waiter_id, wait: float) -> str | None:
    """Admit one command, in one round trip: spend a token of the owner's command bucket and, when
    the caller will await its result for ``wait`` seconds, count one more of the waiter's pending
    waits (a REST ``wait``, a WebSocket ``run``). Returns the wait's id, to give back with
    ``pending_wait_release`` (None: no wait counted). Raise 429 over either limit; over the waits,
    no token is spent."""
    bucket = _bucket_args("command", 1.0)
    limit = settings.VTERM["MAX_PENDING_WAITS_PER_USER"] if wait > 0 else 0
    wait_id = uuid.uuid4().hex if limit > 0 else None
    if bucket is None and wait_id is None:
        return None
    allowed, retry, waits_full = _script(_COMMAND_ADMIT)(
        keys=[bucket_key(owner_id, "command"), pending_waits_key(waiter_id)],
        args=[*(bucket or [0, 0, 0]), limit, wait_id or "", wait + WAIT_MARGIN])
    if int(waits_full):
        raise Throttled(wait=1, detail=f"Too many commands awaiting their results for this user (at most {limit}); "
                                       "wait for some to finish, or submit without waiting.")
    if not int(allowed):
        _raise_if_over("command", float(retry))
    return wait_id


def pending_wait_release_sync(user_id, wait_id: str | None) -> None:
    if wait_id is not None:
        with contextlib.suppress(RedisError):  # without Redis it lapses by itself (WAIT_MARGIN)
            sync_client().zrem(pending_waits_key(user_id), wait_id)


async def pending_wait_release(user_id, wait_id: str | None) -> None:
    if wait_id is not None:
        with contextlib.suppress(RedisError):  # the answer went out already; the wait lapses by itself
            await async_client().zrem(pending_waits_key(user_id), wait_id)


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
