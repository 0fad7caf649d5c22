"""The autoscaler's decision logic (pure): thresholds, confirmation, cooldowns, no flapping."""

from __future__ import annotations

import pytest

from sessions.autoscaler import History, Policy, Sample, decide
from sessions.metrics import histogram_quantile

P = Policy(min_backends=2, max_backends=6, high_load=0.75, low_load=0.30, target_load=0.60, latency_p99=0.05,
           error_rate=0.05, up_after=2, down_after=3, cooldown=60)


def sample(t: float, sessions: int, backends: int = 2, per: int = 10, **kw) -> Sample:
    return Sample(at=t, active_backends=backends, capacity_per_backend=per, sessions=sessions, **kw)


def run(samples, policy=P, history=None):
    h = history or History()
    out = []
    for s in samples:
        d, h = decide(s, h, policy)
        out.append(d)
    return out, h


def test_high_load_scales_up_only_after_confirmation_to_reach_the_target_load():
    (first, second), h = run([sample(0, 18), sample(15, 18)])
    assert first.action == "maintain" and "confirming (1/2)" in first.reason
    assert second.action == "scale_up"
    # 18 sessions at 60% of 10 per backend need 3 backends.
    assert second.target_backends == 3 and second.target_capacity == 30
    assert h.desired == 3 and 0.6 <= second.confidence <= 1.0


def test_waits_for_the_backends_it_asked_for_instead_of_asking_again():
    _, h = run([sample(0, 18), sample(15, 18)])
    (d,), h = run([sample(30, 18)], history=h)  # still 2 active: the third is starting
    assert d.action == "maintain" and d.target_backends == 3 and "waiting for 1" in d.reason


def test_a_load_inside_the_band_keeps_the_desired_count():
    _, h = run([sample(0, 18), sample(15, 18)])
    (d,), h = run([sample(45, 15, backends=3)], history=h)  # 50%
    assert d.action == "maintain" and d.target_backends == 3 and h.high_streak == h.low_streak == 0


def test_alternating_load_around_a_threshold_does_not_flap():
    loads = [16, 14, 16, 14, 16, 14, 16, 14]  # 80%, 70%, ...: never high twice in a row
    decisions, h = run([sample(i * 15, n) for i, n in enumerate(loads)])
    assert {d.action for d in decisions} == {"maintain"} and h.desired == 2


def test_scale_down_one_at_a_time_after_confirmation_and_cooldown():
    h = History(desired=4, last_change_at=0)
    decisions, h = run([sample(t, 4, backends=4) for t in (10, 20, 30, 40)], history=h)  # 10% load
    actions = [d.action for d in decisions]
    # Confirmed at the 3rd sample (t=30) but the cooldown (60 s since t=0) holds until t=60.
    assert actions == ["maintain"] * 4 and "cooling down" in decisions[-1].reason
    (d,), h = run([sample(70, 4, backends=4)], history=h)
    assert d.action == "scale_down" and d.target_backends == 3
    # The next step needs a fresh confirmation and cooldown.
    (d,), h = run([sample(85, 4, backends=3)], history=h)
    assert d.action == "maintain" and d.target_backends == 3


def test_no_scale_down_below_the_minimum_or_when_the_rest_would_be_too_loaded():
    decisions, _ = run([sample(t, 0) for t in range(0, 600, 15)])
    assert all(d.action == "maintain" and d.target_backends == 2 for d in decisions)
    h = History(desired=3, last_change_at=-1000)
    # 8 of 30 = 27% < 30%; on 2 backends 8 of 20 = 40% ≤ 60%: it may go down.
    decisions, _ = run([sample(t, 8, backends=3, per=10) for t in (0, 15, 30)], history=h)
    assert decisions[-1].action == "scale_down" and decisions[-1].target_backends == 2
    h = History(desired=3, last_change_at=-1000)
    tight = Policy(**{**P.__dict__, "target_load": 0.35})
    decisions, _ = run([sample(t, 8, backends=3, per=10) for t in (0, 15, 30)], tight, history=h)
    assert decisions[-1].action == "maintain" and "would be 40% loaded" in decisions[-1].reason


def test_never_above_the_maximum_and_says_so():
    h = History(desired=6, last_change_at=-1000)
    decisions, _ = run([sample(t, 60, backends=6) for t in (0, 15)], history=h)
    assert decisions[-1].action == "maintain" and decisions[-1].target_backends == 6
    assert any("maximum of 6" in r for r in decisions[-1].recommendations)


def test_latency_counts_as_pressure_only_when_the_pool_is_loaded():
    busy, _ = run([sample(t, 10, latency_p99=0.2) for t in (0, 15)])  # 50% load, slow
    assert busy[-1].action == "scale_up"
    idle, _ = run([sample(t, 2, latency_p99=0.2) for t in (0, 15, 30, 45, 60)])  # 10% load, slow
    assert {d.action for d in idle} == {"maintain"}
    assert any("Redis, the database" in r for r in idle[-1].recommendations)


def test_errors_and_memory_give_recommendations():
    (d,), _ = run([sample(0, 10, error_rate=0.2, memory_usage=0.9)])
    recs = " ".join(d.recommendations)
    assert "20% of commands" in recs and "90% of their memory" in recs


@pytest.mark.parametrize("q,expected", [(0.5, 0.01), (0.99, 0.0495), (0.25, 0.0075)])
def test_histogram_quantile_like_prometheus(q, expected):
    # 50 observations in (0.005, 0.01], 50 in (0.025, 0.05].
    buckets = [("0.005", 0), ("0.01", 50), ("0.025", 50), ("0.05", 100), ("+Inf", 100)]
    assert histogram_quantile(q, buckets) == pytest.approx(expected, abs=1e-4)
    assert histogram_quantile(q, [("0.01", 0), ("+Inf", 0)]) is None


def test_slow_commands_hold_a_scale_down_and_say_why():
    h = History(desired=4, last_change_at=-1000)
    decisions, h = run([sample(t, 2, backends=4, latency_p99=0.3) for t in (0, 15, 30, 45)], history=h)
    assert {d.action for d in decisions} == {"maintain"} and h.desired == 4
    assert "not scaling down" in decisions[-1].reason and "300 ms" in decisions[-1].reason
