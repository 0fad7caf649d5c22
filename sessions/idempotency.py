"""Idempotency keys: the IETF httpapi draft's ``Idempotency-Key`` header, for creating sessions and commands.

A key is the user's (two users' same key are two keys) and is kept VTERM_IDEMPOTENCY_TTL (24 h) in
Redis, so that every web node sees it: a hash with the request's fingerprint, the id planned for
what the request creates and, once created, the status it was answered with. The new row is given
the planned id, so that whatever becomes of the request that holds the key, a repeat finds what it
made (or that it made nothing) by that id.

While a request with the key is being handled it holds a lease: another key with a TTL, the
request's own longest time (its ``wait``, a session's start) and a margin. A repeat meanwhile is a
409. A web node that dies mid-request leaves the lease to lapse, not the key blocked for 24 h: the
next repeat takes the key over, finds the row by its planned id and answers with it, or, when
nothing was made, makes it (with the same id: still only once).

A request that failed and made nothing (400, 404, 429, 503 ...) lets its key go: as the draft
has it, the client may retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import uuid
from dataclasses import dataclass

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError

from .api_errors import Conflict
from .redis_state import async_client, idempotency_record_key, sync_client

HEADER = "Idempotency-Key"
LEASE_MARGIN = 30.0  # seconds a lease outlives its request's own longest time (submission, a slow answer)

# The key as it may be sent: 1 to 255 printable ASCII characters, no space at either end (HTTP
# trims them). For the OpenAPI schema too, where it is the parameter's pattern.
KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
_KEY = re.compile(KEY_PATTERN)
# The draft's form, a Structured Field String (RFC 8941 §3.3.3): "…", with \" and \\ escaped.
_SF_STRING = re.compile(r'"((?:[ !#-\[\]-~]|\\["\\])+)"')


class IdempotencyKeyReused(APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"
    default_detail = (f"This {HEADER} was used with a different request; a new request needs a new key "
                      f"(keys are kept {{ttl}} s).")


def idempotency_key_parse(value: str | None) -> str | None:
    """The key a request carries in its header (None: no header); a bad value is a 400 naming the header.

    The draft writes the key as a Structured Field String, in quotes; most clients send it bare.
    Both are taken: a quoted value stands for the string inside (``"abc"`` and ``abc`` are one key).
    """
    if value is None:
        return None
    value = value.strip(" \t")
    if not _KEY.fullmatch(value):
        raise ValidationError({HEADER: ["Must be 1 to 255 printable ASCII characters (a UUID is a good key)."]})
    if m := _SF_STRING.fullmatch(value):
        return re.sub(r"\\(.)", r"\1", m.group(1))
    return value


def idempotency_fingerprint(operation: str, request: dict) -> str:
    """What makes two requests the same: the operation and its validated fields, in a canonical form
    (so that the order of the fields, spacing or ``1`` against ``1.0`` make no difference)."""
    canonical = json.dumps(_numbers_alike({"op": operation, **request}), sort_keys=True, separators=(",", ":"),
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _numbers_alike(value):
    """``value`` with its whole numbers as floats: 5 and 5.0 are one number in JSON (those too large
    for a float stay as they are)."""
    if isinstance(value, dict):
        return {k: _numbers_alike(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numbers_alike(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= 2**53:
        return float(value)
    return value


@dataclass
class IdempotencyClaim:
    """A request's hold on a key: the id planned for what it makes, and what the key had seen."""

    user_id: int
    record: str  # the Redis hash of the key
    lease: str  # the Redis key of the lease
    token: str  # this request's lease
    id: uuid.UUID  # what the request makes gets this id
    seen: bool  # an earlier request had the key (it made ``id``, or it died before saying)
    status: int | None  # what that request was answered, when it was


# KEYS[1] the key's hash, KEYS[2] its lease. ARGV fingerprint, planned id, lease token, TTL (s), lease (ms).
# Returns {"new", id}, {"seen", id, status or ""}, {"reused"} (another fingerprint) or {"busy"} (leased).
_CLAIM = """
local fp = redis.call('HGET', KEYS[1], 'fp')
if not fp then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'id', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5])
  return {'new', ARGV[2]}
end
if fp ~= ARGV[1] then
  return {'reused'}
end
if not redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[5], 'NX') then
  return {'busy'}
end
return {'seen', redis.call('HGET', KEYS[1], 'id'), redis.call('HGET', KEYS[1], 'status') or ''}
"""

# KEYS the key's hash, its lease; ARGV the lease token, "forget" to drop the key too. Only the
# lease's holder lets go (a request whose lease lapsed and was taken over changes nothing).
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  if ARGV[2] == 'forget' then
    redis.call('DEL', KEYS[1])
  end
end
return 0
"""


def idempotency_claim(user_id: int, key: str, fingerprint: str, *, seconds: float) -> IdempotencyClaim:
    """Hold ``key`` for a request that lasts at most ``seconds``: 409 while another request holds
    it, 422 when it was used for another request."""
    ttl = settings.VTERM["IDEMPOTENCY_TTL"]
    record = idempotency_record_key(user_id, key)
    lease = record + ":lease"
    token = uuid.uuid4().hex
    got = sync_client().eval(_CLAIM, 2, record, lease, fingerprint, str(uuid.uuid4()), token, ttl,
                             int((seconds + LEASE_MARGIN) * 1000))
    outcome = got[0].decode()
    if outcome == "reused":
        raise IdempotencyKeyReused(IdempotencyKeyReused.default_detail.format(ttl=ttl))
    if outcome == "busy":
        raise Conflict(f"A request with this {HEADER} is still being handled; repeat it once that one "
                       "has been answered.")
    answered = got[2].decode() if len(got) > 2 else ""
    return IdempotencyClaim(user_id=user_id, record=record, lease=lease, token=token, id=uuid.UUID(got[1].decode()),
                            seen=outcome == "seen", status=int(answered) if answered else None)


# Without Redis, those below change nothing that matters: the lease lapses by itself, and a repeat
# finds what was made (or not) by its planned id.


def idempotency_made(claim: IdempotencyClaim, answered: int) -> None:
    """The request made its resource and answers ``answered``: repeats get the same from now on."""
    with contextlib.suppress(RedisError):
        sync_client().hset(claim.record, "status", answered)


def idempotency_replay(claim: IdempotencyClaim, queryset):
    """What an earlier request with the claim's key made (its row in ``queryset``, as it is now), or
    None when it made nothing: then this request makes it."""
    if not claim.seen:
        return None
    made = queryset.filter(pk=claim.id).first()
    if made is not None and claim.status is None:  # its request died before it could say
        claim.status = status.HTTP_201_CREATED
        idempotency_made(claim, claim.status)
    return made


def idempotency_failed(claim: IdempotencyClaim, queryset) -> None:
    """The request failed. Mostly it made nothing, and the key is free again; if it made its row
    all the same (a command recorded, then refused by Redis), repeats get that row."""
    if queryset.filter(pk=claim.id).exists():
        idempotency_made(claim, status.HTTP_201_CREATED)
        how = ""
    else:
        how = "forget"
    with contextlib.suppress(RedisError):
        sync_client().eval(_RELEASE, 2, claim.record, claim.lease, claim.token, how)


async def idempotency_release(claim: IdempotencyClaim | None) -> None:
    """The request has been answered: a repeat may now have the key."""
    if claim is not None:
        with contextlib.suppress(RedisError):
            await async_client().eval(_RELEASE, 2, claim.record, claim.lease, claim.token, "")
