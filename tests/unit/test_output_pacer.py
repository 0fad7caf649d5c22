"""The output pacer (workers/output_frames.FloodPacer): when a session's gathered output is sent.
Pure logic: the clock is given, nothing sleeps."""

from workers.output_frames import FloodPacer

FRAME = 1000


def pacer(**kw) -> FloodPacer:
    return FloodPacer(**{"interval": 0.005, "flood_bytes": 400, "flood_wait": 0.02, "frame_max": FRAME, **kw})


def test_an_idle_session_sends_at_once():
    p = pacer()
    assert p.plan("s", 1, now=10.0) == (1, 10.0), "never sent: an echo goes at once"
    p.sent("s", 1, now=10.0)
    assert p.plan("s", 1, now=10.006) == (1, 10.006), "quiet for longer than the interval: at once"


def test_output_that_follows_a_small_send_waits_for_the_interval():
    p = pacer()
    p.sent("s", 100, now=10.0)
    assert p.plan("s", 50, now=10.001) == (0, 10.005)
    assert p.plan("s", 5 * FRAME, now=10.001) == (0, 10.005), "not flooding: the size does not matter"
    assert p.plan("s", 50, now=10.005) == (50, 10.005)


def test_a_flood_sends_whole_frames_and_keeps_the_rest():
    p = pacer()
    p.sent("s", 400, now=10.0)  # a send of flood_bytes: flooding
    assert p.plan("s", 300, now=10.006) == (0, 10.02), "past the interval, but a flood waits for a frame"
    assert p.plan("s", FRAME, now=10.006) == (FRAME, 10.02)
    assert p.plan("s", 2 * FRAME + 7, now=10.006) == (2 * FRAME, 10.02), "whole frames; the 7 bytes wait"
    p.sent("s", 2 * FRAME, now=10.006)
    assert p.plan("s", 7, now=10.025) == (0, 10.026), "the wait runs from the last send"
    assert p.plan("s", 7, now=10.03) == (7, 10.03), "the wait is over: all of it"


def test_a_flood_ends_when_a_send_is_small():
    p = pacer()
    p.sent("s", FRAME, now=10.0)
    p.sent("s", 7, now=10.02)  # the tail, after the wait
    assert p.plan("s", 1, now=10.03) == (1, 10.03), "an echo after the flood goes at once"


def test_sessions_are_paced_apart():
    p = pacer()
    p.sent("flood", FRAME, now=10.0)
    assert p.plan("quiet", 1, now=10.001) == (1, 10.001), "another session's flood does not hold an echo"
    assert p.plan("flood", 1, now=10.001) == (0, 10.02)


def test_no_wait_no_flood_pacing():
    p = pacer(flood_wait=0)
    p.sent("s", FRAME, now=10.0)
    assert p.plan("s", 1, now=10.001) == (0, 10.005)
    assert p.plan("s", 1, now=10.005) == (1, 10.005)


def test_forget_makes_a_session_new():
    p = pacer()
    p.sent("s", FRAME, now=10.0)
    p.forget("s")
    assert p.plan("s", 1, now=10.001) == (1, 10.001)


def test_wakes_on_first_bytes_and_on_a_full_frame_only():
    p = pacer()
    assert p.wakes(0, 10)
    assert not p.wakes(10, 20)
    assert p.wakes(FRAME - 1, FRAME)
    assert p.wakes(10, 3 * FRAME)
    assert not p.wakes(FRAME, FRAME + 10), "a frame already full woke it"
