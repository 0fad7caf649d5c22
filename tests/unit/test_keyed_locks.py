"""A backend's per-session locks: one holder per session at a time, sessions independent, and
nothing kept once no one holds or awaits a session's lock (pure logic, real threads)."""

from __future__ import annotations

import threading

import pytest

from workers.keyed_locks import KeyedLocks


def test_one_holder_per_key_and_nothing_kept_after():
    locks = KeyedLocks()
    inside, release = threading.Event(), threading.Event()
    order: list[str] = []

    def first():
        with locks.hold("s1"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second():
        with locks.hold("s1"):
            order.append("second in")

    t1 = threading.Thread(target=first)
    t1.start()
    assert inside.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    with locks.hold("s2"):  # another session is not held up
        order.append("other session")
    release.set()
    t1.join(10)
    t2.join(10)
    assert order == ["first in", "other session", "first out", "second in"]
    assert len(locks) == 0


def test_many_keys_seen_once_leave_nothing_behind_even_on_errors():
    locks = KeyedLocks()
    for i in range(1000):
        with locks.hold(f"unknown-{i}"):
            pass
    with pytest.raises(RuntimeError), locks.hold("failing"):
        raise RuntimeError("the message failed")
    assert len(locks) == 0
    with locks.hold("failing"):  # and the key can be taken again
        assert len(locks) == 1
