"""Idempotency-Key (sessions/idempotency.py): the header's syntax, the fingerprint, and a key's life in a real
Redis (taken, held, answered, let go, lapsed). The live requests are tests/integration/test_idempotency.py."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from rest_framework.exceptions import ValidationError

from sessions import idempotency
from sessions.api_errors import Conflict
from sessions.idempotency import (
    IdempotencyKeyReused,
    idempotency_claim,
    idempotency_fingerprint,
    idempotency_key_parse,
    idempotency_made,
    idempotency_release,
)
from tests.unit.test_failover_reconcile import live_redis  # noqa: F401 (fixture)


@pytest.mark.parametrize(("value", "key"), [
    (None, None),
    ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    ('"8e03978e-40d5"', "8e03978e-40d5"),  # the draft's sf-string
    (r'"say \"hi\" \\o/"', 'say "hi" \\o/'),
    ('""', '""'),  # no sf-string (empty): the value as it is
    ('"a', '"a'),
    ("  padded\t", "padded"),  # HTTP's spaces around a value are not the value's
    ("a b", "a b"),
    ("k" * 255, "k" * 255),
    ("~!#$%&'()*+,-./:;<=>?@[]^_`{|}", "~!#$%&'()*+,-./:;<=>?@[]^_`{|}"),
])
def test_good_keys(value, key):
    assert idempotency_key_parse(value) == key


@pytest.mark.parametrize("value", ["", "   ", "k" * 256, "caf\xe9", "a\x00b", "a\x7fb", "a\nb", "\u2028"])
def test_bad_keys_are_400_naming_the_header(value):
    with pytest.raises(ValidationError) as err:
        idempotency_key_parse(value)
    assert list(err.value.detail) == ["Idempotency-Key"]


def test_the_fingerprint_is_the_request_not_its_spelling():
    a = idempotency_fingerprint("command", {"command": "ls", "timeout": 1, "wait": 0})
    assert a == idempotency_fingerprint("command", {"wait": 0, "timeout": 1.0, "command": "ls"})
    assert a != idempotency_fingerprint("command", {"command": "ls", "timeout": 2, "wait": 0})
    assert a != idempotency_fingerprint("session", {"command": "ls", "timeout": 1, "wait": 0})


def test_a_key_is_held_answered_and_let_go(live_redis, settings):  # noqa: F811
    key, fp = str(uuid.uuid4()), idempotency_fingerprint("command", {"n": 1})
    first = idempotency_claim(1, key, fp, seconds=5)
    assert not first.seen and first.status is None
    with pytest.raises(Conflict):  # being handled
        idempotency_claim(1, key, fp, seconds=5)
    with pytest.raises(IdempotencyKeyReused):  # another request: 422, held or not
        idempotency_claim(1, key, idempotency_fingerprint("command", {"n": 2}), seconds=5)
    assert not idempotency_claim(2, key, fp, seconds=5).seen  # another user's key
    idempotency_made(first, 201)
    asyncio.run(idempotency_release(first))
    again = idempotency_claim(1, key, fp, seconds=5)
    assert (again.seen, again.status, again.id) == (True, 201, first.id)
    assert 0 < live_redis.ttl(first.record) <= settings.VTERM["IDEMPOTENCY_TTL"]


def test_a_lease_whose_holder_died_lapses(live_redis, monkeypatch):  # noqa: F811
    monkeypatch.setattr(idempotency, "LEASE_MARGIN", 0.2)
    key, fp = str(uuid.uuid4()), "fp"
    dead = idempotency_claim(1, key, fp, seconds=0)  # never released
    with pytest.raises(Conflict):
        idempotency_claim(1, key, fp, seconds=0)
    time.sleep(0.4)
    taken = idempotency_claim(1, key, fp, seconds=0)
    assert (taken.seen, taken.status, taken.id) == (True, None, dead.id)  # it finds what was made by that id
    asyncio.run(idempotency_release(dead))  # the late holder lets go of nothing it no longer holds
    with pytest.raises(Conflict):
        idempotency_claim(1, key, fp, seconds=0)
