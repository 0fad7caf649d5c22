"""The backend inbox's per-session queues (workers/inbox.py): order kept within a session,
sessions served in turn, one message of a session at a time, keystrokes over the allowance dropped."""

from __future__ import annotations

import threading

from workers.inbox import SessionQueues


def _msg(session: str, n: int, op: str = "input", data: str = "x") -> dict:
    return {"op": op, "session": session, "data": data, "n": n}


def _serve_all(q: SessionQueues) -> list[tuple[str, int]]:
    order = []
    while (taken := q.take(0)) is not None:
        sid, msg = taken
        order.append((sid, msg["n"]))
        q.done(sid)
    return order


def test_a_backlog_in_one_session_does_not_delay_another():
    q = SessionQueues(max_input_chars=10**9)
    for n in range(1000):
        q.put(_msg("bob", n))
    q.put(_msg("alice", 0, op="run"))
    order = _serve_all(q)
    assert order.index(("alice", 0)) == 1, "alice's turn comes after one of bob's messages"
    assert [n for sid, n in order if sid == "bob"] == list(range(1000)), "bob's own order is kept"


def test_sessions_take_turns():
    q = SessionQueues(max_input_chars=10**9)
    for n in range(3):
        for sid in ("a", "b", "c"):
            q.put(_msg(sid, n))
    assert _serve_all(q) == [(sid, n) for n in range(3) for sid in ("a", "b", "c")]


def test_a_session_is_served_by_one_thread_at_a_time():
    q = SessionQueues(max_input_chars=10**9)
    for n in range(3):
        q.put(_msg("bob", n))
    q.put(_msg("alice", 0))
    first = q.take(0)
    assert first[0] == "bob"
    # While bob's first message is being carried out, another thread gets alice, not bob's second.
    assert q.take(0)[0] == "alice"
    assert q.take(0) is None
    q.done("bob")
    assert q.take(0) == ("bob", _msg("bob", 1))


def test_keystrokes_over_the_allowance_are_dropped_and_commands_never():
    q = SessionQueues(max_input_chars=100)
    assert q.put(_msg("bob", 0, data="x" * 60))
    assert not q.put(_msg("bob", 1, data="x" * 60)), "over 100 characters waiting"
    assert q.put(_msg("bob", 2, op="run", data="")), "a command is never dropped"
    assert q.put(_msg("alice", 0, data="x" * 60)), "alice's allowance is her own"
    sid, msg = q.take(0)
    assert (sid, msg["n"]) == ("bob", 0)
    q.done(sid)
    assert q.put(_msg("bob", 3, data="x" * 60)), "room again once typed"
    assert [n for s, n in _serve_all(q) if s == "bob"] == [2, 3]


def test_a_waiting_thread_is_woken_by_a_message():
    q = SessionQueues(max_input_chars=100)
    got = []
    t = threading.Thread(target=lambda: got.append(q.take(10)))
    t.start()
    q.put(_msg("alice", 0))
    t.join(10)
    assert got and got[0][0] == "alice"
