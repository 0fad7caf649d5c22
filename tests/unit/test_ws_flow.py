"""Pure logic of the WebSocket output path: the viewer's window and the stream's framing and budget."""

from sessions.ws_flow import OutputWindow
from workers.output_frames import BLOCK, StreamBudget, frame_pieces


def test_window_pauses_at_high_and_resumes_under_low():
    w = OutputWindow(high=100, low=20, skip=1000)
    w.start(0, 0)
    assert w.saw_live(1, 60)
    w.record_sent(1, 60)
    assert w.saw_live(2, 60)
    w.record_sent(2, 60)
    assert w.paused and w.inflight == 120
    assert not w.saw_live(3, 60) and w.held == 60 and w.behind
    assert not w.ack(1), "80 still in flight: above low"
    assert w.ack(2) and not w.paused and w.inflight == 0


def test_window_drops_repeats_and_sees_gaps():
    w = OutputWindow(high=100, low=20, skip=1000)
    w.start(5, 5)
    assert not w.saw_live(5, 1), "already had it"
    assert not w.saw_live(7, 1) and w.behind and not w.paused, "a gap: mend from the stream, not live"


def test_window_skips_after_too_much_was_held():
    w = OutputWindow(high=10, low=0, skip=50)
    w.start(0, 0)
    w.record_sent(1, 10)
    for seq in range(2, 10):
        w.saw_live(seq, 10)
    assert w.too_far_behind
    w.record_snapshot(9, 5)
    assert not w.too_far_behind and w.sent == 9 and not w.behind


def test_frame_pieces_bound_the_size():
    assert frame_pieces("abc", 5) == ["abc"]
    assert frame_pieces("", 5) == [""]
    pieces = frame_pieces("x" * 12, 5)
    assert pieces == ["xxxxx", "xxxxx", "xx"]


def test_stream_budget_trims_whole_blocks_to_the_limit():
    b = StreamBudget(max_chars=3 * BLOCK)
    trims = [b.add(seq, BLOCK) for seq in range(1, 6)]
    assert trims[:3] == [None, None, None]
    assert trims[3] == 2 and trims[4] == 3, "trim below the oldest kept block"
    assert b.total <= 3 * BLOCK
    small = StreamBudget(max_chars=10 * BLOCK)
    assert all(small.add(seq, 10) is None for seq in range(1, 1000)), "small frames share a block"


def test_window_refuses_acks_beyond_what_was_sent():
    """A client that acks far ahead (never reading) must not unpause itself: the window counts what
    the server sent, and an ack above it releases nothing."""
    import pytest

    from sessions.ws_flow import AckBeyondSent

    w = OutputWindow(high=100, low=20, skip=1000)
    w.start(0, 0)
    for seq in (1, 2):
        w.saw_live(seq, 60)
        w.record_sent(seq, 60)
    assert w.paused and w.inflight == 120
    with pytest.raises(AckBeyondSent, match="1000000000000000 is beyond the last output sent to this viewer .2."):
        w.ack(10**15)
    assert w.paused and w.inflight == 120, "a refused ack released nothing"
    with pytest.raises(AckBeyondSent):
        w.ack(3)
    assert w.ack(2) and not w.paused and w.inflight == 0, "an honest ack still works"
    # A snapshot counts as sent up to its seq; `since` too (the client had that much already).
    w.record_snapshot(40, 10)
    assert not w.ack(40)
    w2 = OutputWindow(high=100, low=20, skip=1000)
    w2.start(7, 9)
    assert not w2.ack(7)
    with pytest.raises(AckBeyondSent):
        w2.ack(8)
