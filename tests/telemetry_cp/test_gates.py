"""The telemetry gates' pure logic: wait below the minimum sample, halt above the allowed
regression (naming both numbers and intervals), pass otherwise; specs round-trip."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.rollouts.core import (
    AllOf,
    InvalidRolloutError,
    StageCounts,
    Verdict,
    gate_from_spec,
)
from control_plane.telemetry.estimates import (
    NoisyValue,
    QuantileEstimate,
    estimate_rate,
    estimate_sum,
)
from control_plane.telemetry.gates import (
    SIGNALS_KEY,
    ErrorRateRegression,
    LatencyRegression,
    MetricComparison,
    RateComparison,
    TelemetrySignals,
)

GATE = LatencyRegression(metric="chat_ttft", max_regression=0.2, min_sample=3)


def _q(value: float | None, devices: int, observations: float = 500) -> QuantileEstimate:
    if value is None:
        return QuantileEstimate(0.95, None, None, None, 0.0, devices)
    return QuantileEstimate(0.95, value, value * 0.9, value * 1.1, observations, devices)


def _counts(signals: TelemetrySignals | None, committed: int = 10) -> StageCounts:
    extra: dict[str, Any] = {} if signals is None else {SIGNALS_KEY: signals}
    return StageCounts(
        stage=0, percent=10, is_last=False, committed=committed, failed=0, timed_out=0,
        pending=0, signals=extra,
    )  # fmt: skip


def _latency(new: QuantileEstimate, old: QuantileEstimate | None) -> TelemetrySignals:
    return TelemetrySignals(
        latency={("chat_ttft", 0.95): MetricComparison(new, old, "app@2", "app@1")}
    )


def test_waits_until_enough_devices_sent_telemetry() -> None:
    result = GATE.evaluate(_counts(_latency(_q(0.9, devices=2), _q(0.3, 10))))
    assert result.verdict is Verdict.WAIT
    assert "2 of the minimum 3 devices" in result.reason
    assert GATE.evaluate(_counts(None)).verdict is Verdict.WAIT


def test_waits_until_enough_requests_were_measured() -> None:
    result = GATE.evaluate(_counts(_latency(_q(0.9, 5, observations=7), _q(0.3, 10))))
    assert result.verdict is Verdict.WAIT
    assert "about 7 requests" in result.reason


def test_a_stage_too_small_for_the_sample_passes_unjudged() -> None:
    result = GATE.evaluate(_counts(None, committed=2))
    assert result.verdict is Verdict.PASS and "judged at a later stage" in result.reason


def test_halts_above_the_allowed_regression_naming_both_numbers_and_intervals() -> None:
    result = GATE.evaluate(_counts(_latency(_q(0.5, 5), _q(0.4, 20))))
    assert result.verdict is Verdict.HALT
    assert result.reason.startswith(
        "p95 time to first token 500 ms [95% CI 450-550 ms] on app@2 (5 devices) vs"
        " 400 ms [95% CI 360-440 ms] on app@1 (20 devices): +25%, more than the allowed +20%"
    )
    assert result.numbers["regression"] == 0.25
    assert result.numbers["candidate_low_seconds"] == pytest.approx(0.45)


def test_passes_within_the_allowed_regression_and_without_a_baseline() -> None:
    assert GATE.evaluate(_counts(_latency(_q(0.47, 5), _q(0.4, 20)))).verdict is Verdict.PASS
    first = GATE.evaluate(_counts(_latency(_q(0.9, 5), None)))
    assert first.verdict is Verdict.PASS and "no telemetry from the previous" in first.reason


def test_error_rate_gate_halts_on_an_increase_above_the_allowed_points() -> None:
    gate = ErrorRateRegression(max_increase=0.02, min_sample=3)

    def rate(errors: float, requests: float) -> Any:
        return estimate_rate(
            estimate_sum([NoisyValue(errors, 4.0)]), estimate_sum([NoisyValue(requests, 4.0)])
        )

    def signals(new: Any, old: Any, devices: int = 5) -> TelemetrySignals:
        return TelemetrySignals(
            latency={}, error_rate=RateComparison(new, old, devices, "app@2", "app@1")
        )

    halted = gate.evaluate(_counts(signals(rate(60, 1000), rate(10, 1000))))
    assert halted.verdict is Verdict.HALT
    assert "error rate 6% [95% CI" in halted.reason and "on app@1" in halted.reason
    assert gate.evaluate(_counts(signals(rate(15, 1000), rate(10, 1000)))).verdict is Verdict.PASS
    waiting = gate.evaluate(_counts(signals(rate(60, 1000), rate(10, 1000), devices=1)))
    assert waiting.verdict is Verdict.WAIT


def test_specs_round_trip_and_bad_specs_name_the_field() -> None:
    for gate in (GATE, ErrorRateRegression(max_increase=0.05, min_sample=4)):
        assert gate_from_spec(gate.spec()) == gate
    composite = AllOf(gates=(GATE,))
    assert gate_from_spec(composite.spec()) == composite
    with pytest.raises(InvalidRolloutError, match="metric: 'ttft' is not one of"):
        gate_from_spec({"type": "latency_regression", "metric": "ttft", "max_regression": 0.2})
    with pytest.raises(InvalidRolloutError, match="max_regression: must be a number"):
        gate_from_spec({"type": "latency_regression", "metric": "chat_ttft"})
