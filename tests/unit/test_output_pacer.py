"""The output pacer (workers/output_frames.FloodPacer): when a session's gathered output is sent.
Pure logic: the clock is given, nothing sleeps."""

from workers.output_frames import FloodPacer

FRAME = 1000


def pacer(**kw) -> FloodPacer:
    return FloodPacer(**{"interval": 0.005, "flood_bytes": 400, "flood_wait": 0.02, "frame_max": FRAME, **kw})


def test_an_idle_session_sends_at_once():
    p = pacer()
    assert p.plan({"s": 1}, now=10.0) == ({"s": 1}, None), "never sent: an echo goes at once"
    p.sent("s", 1, now=10.0)
    assert p.plan({"s": 1}, now=10.006) == ({"s": 1}, None), "quiet for longer than the interval: at once"


def test_output_that_follows_a_small_send_waits_for_the_interval():
    p = pacer()
    p.sent("s", 100, now=10.0)
    assert p.plan({"s": 50}, now=10.001) == ({}, 10.005)
    assert p.plan({"s": 5 * FRAME}, now=10.001) == ({}, 10.005), "not flooding: the size does not matter"
    assert p.plan({"s": 50}, now=10.005) == ({"s": 50}, None)


def test_a_busy_thread_holds_a_quiet_session_for_its_next_send():
    p = pacer()
    p.sent("a", 100, now=10.0)
    assert p.plan({"b": 1}, now=10.001) == ({}, 10.005), "b sent nothing yet, but the thread just did"
    assert p.plan({"a": 5, "b": 1}, now=10.005) == ({"a": 5, "b": 1}, None), "one send carries both"


def test_the_thread_idle_for_the_interval_sends_at_once():
    p = pacer()
    p.sent("a", 100, now=10.0)
    assert p.plan({"b": 1}, now=10.005) == ({"b": 1}, None)


def test_a_look_at_the_time_given_finds_it_due():
    p = pacer()
    sent_at = 84.74337369372327  # (sent_at + 0.005) - sent_at < 0.005 in floats
    p.sent("a", 100, now=sent_at)
    _, later = p.plan({"b": 1}, now=sent_at)
    assert p.plan({"b": 1}, now=later) == ({"b": 1}, None), "else the thread would spin until the clock moves"


def test_held_output_joins_a_flood_frame():
    p = pacer()
    p.sent("flood", FRAME, now=10.0)
    assert p.plan({"quiet": 1, "flood": 3}, now=10.001) == ({}, 10.005), "nothing goes: the echo waits"
    assert p.plan({"quiet": 1, "flood": FRAME + 3}, now=10.001) == ({"quiet": 1, "flood": FRAME}, 10.02), \
        "a frame goes: the echo goes with it"


def test_a_flood_sends_whole_frames_and_keeps_the_rest():
    p = pacer()
    p.sent("s", 400, now=10.0)  # a send of flood_bytes: flooding
    assert p.plan({"s": 300}, now=10.006) == ({}, 10.02), "the thread is idle, but a flood waits for a frame"
    assert p.plan({"s": FRAME}, now=10.006) == ({"s": FRAME}, None)
    assert p.plan({"s": 2 * FRAME + 7}, now=10.006) == ({"s": 2 * FRAME}, 10.02), \
        "whole frames; the 7 bytes wait"
    p.sent("s", 2 * FRAME, now=10.006)
    assert p.plan({"s": 7}, now=10.025) == ({}, 10.026), "the wait runs from the last send"
    assert p.plan({"s": 7}, now=10.03) == ({"s": 7}, None), "the wait is over: all of it"


def test_a_flooding_session_does_not_join_with_part_of_a_frame():
    p = pacer()
    p.sent("flood", FRAME, now=10.0)
    p.sent("a", 10, now=10.001)
    assert p.plan({"a": 5, "flood": 3}, now=10.01) == ({"a": 5}, 10.02)


def test_a_flood_ends_when_a_send_is_small():
    p = pacer()
    p.sent("s", FRAME, now=10.0)
    p.sent("s", 7, now=10.02)  # the tail, after the wait
    assert p.plan({"s": 1}, now=10.03) == ({"s": 1}, None), "an echo after the flood goes at once"


def test_no_wait_no_flood_pacing():
    p = pacer(flood_wait=0)
    p.sent("s", FRAME, now=10.0)
    assert p.plan({"s": 1}, now=10.001) == ({}, 10.005)
    assert p.plan({"s": 1}, now=10.005) == ({"s": 1}, None)


def test_forget_ends_a_sessions_flood():
    p = pacer()
    p.sent("s", FRAME, now=10.0)
    p.forget("s")
    assert p.plan({"s": 3}, now=10.006) == ({"s": 3}, None), "not flooding: it need not wait for a frame"


def test_wakes_on_first_bytes_and_on_a_full_frame_only():
    p = pacer()
    assert p.wakes(0, 10)
    assert not p.wakes(10, 20)
    assert p.wakes(FRAME - 1, FRAME)
    assert p.wakes(10, 3 * FRAME)
    assert not p.wakes(FRAME, FRAME + 10), "a frame already full woke it"
