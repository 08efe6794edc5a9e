"""The measurement rules: warm-up, minimum queries and duration, seeded bootstrap
intervals, and a verdict that is never a pass while the interval straddles the threshold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge_agent.updates.acceptance import QueryRules, Status, collect, estimate, judge


class FakeClock:
    """Advances ``step`` seconds per query (a query's cost), read by ``collect``."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.now


def counting(clock: FakeClock, calls: list[int]) -> Callable[[int], float]:
    def query(i: int) -> float:
        calls.append(i)
        clock.now += clock.step
        return 10.0 + i % 3

    return query


def test_warmup_is_run_but_not_kept() -> None:
    clock, calls = FakeClock(0.001), list[int]()
    rules = QueryRules(warmup=4, min_queries=5, min_duration_s=0)
    samples = collect(counting(clock, calls), rules, clock)
    assert len(calls) == 9 and len(samples) == 5


def test_minimum_duration_keeps_querying_past_the_minimum_count() -> None:
    clock, calls = FakeClock(0.1), list[int]()  # 100 ms per query; 2 s needs 20 queries
    rules = QueryRules(warmup=0, min_queries=5, min_duration_s=2.0)
    samples = collect(counting(clock, calls), rules, clock)
    assert len(samples) == 20


def test_minimum_count_keeps_querying_past_the_minimum_duration() -> None:
    clock, calls = FakeClock(1.0), list[int]()
    rules = QueryRules(warmup=0, min_queries=12, min_duration_s=0.5)
    assert len(collect(counting(clock, calls), rules, clock)) == 12


def test_a_slow_device_stops_at_the_duration_cap() -> None:
    clock, calls = FakeClock(10.0), list[int]()
    rules = QueryRules(warmup=0, min_queries=100, min_duration_s=1, max_duration_s=30)
    assert len(collect(counting(clock, calls), rules, clock)) == 3  # 30 s reached


def test_the_interval_is_seeded_and_holds_the_estimate() -> None:
    samples = [float(x) for x in range(1, 101)]
    rules = QueryRules(seed=7)
    first, again = estimate(samples, 95, rules), estimate(samples, 95, rules)
    assert first == again
    assert first.low <= first.value <= first.high
    assert first.value == pytest.approx(95.05)
    other = estimate(samples, 95, QueryRules(seed=8))
    assert (other.low, other.high) != (first.low, first.high)


def test_pass_fail_and_inconclusive_for_a_latency_bound() -> None:
    rules = QueryRules()
    samples = [10.0 + (i % 10) * 0.1 for i in range(200)]  # p95 ~ 10.9, a tight interval
    passed = judge("vision_p95_ms", "ms", "max", 20.0, samples, q=95, rules=rules)
    failed = judge("vision_p95_ms", "ms", "max", 5.0, samples, q=95, rules=rules)
    assert (passed.status, failed.status) == (Status.PASS, Status.FAIL)
    spread = [float(x) for x in range(1, 41)]  # p95 38.05, interval about [35, 40]
    est = estimate(spread, 95, rules)
    inside = (est.low + est.high) / 2
    straddling = judge("vision_p95_ms", "ms", "max", inside, spread, q=95, rules=rules)
    assert est.low < inside < est.high
    assert straddling.status is Status.INCONCLUSIVE


def test_a_throughput_bound_passes_above_and_fails_below() -> None:
    rules = QueryRules()
    samples = [50.0 + (i % 5) for i in range(100)]
    up = judge("decode_tokens_per_s_p50", "tokens/s", "min", 10.0, samples, q=50, rules=rules)
    down = judge("decode_tokens_per_s_p50", "tokens/s", "min", 90.0, samples, q=50, rules=rules)
    assert (up.status, down.status) == (Status.PASS, Status.FAIL)


def test_a_single_observation_is_judged_on_its_value() -> None:
    rules = QueryRules()
    assert (
        judge("peak_rss_mb", "MB", "max", 500, [400.0], q=None, rules=rules).status is Status.PASS
    )
    assert (
        judge("peak_rss_mb", "MB", "max", 500, [600.0], q=None, rules=rules).status is Status.FAIL
    )
    none = judge("peak_rss_mb", "MB", "max", 500, [], q=None, rules=rules, note="no agent")
    assert none.status is Status.NOT_MEASURED and none.note == "no agent"


def test_nan_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        estimate([1.0, float("nan")], 95, QueryRules())
