"""Rollout gates on telemetry: p95 latency and error-rate regression against the previous
release on the same cohort. Pure: the rollout service puts a :class:`TelemetrySignals` in
``StageCounts.signals`` (see :func:`control_plane.telemetry.service.rollout_signals`) and
these gates only read it.

Each gate waits until the stage's devices on the new release have sent telemetry from at
least ``min_sample`` devices (and ``min_observations`` requests), then halts when the new
release is more than ``max_regression`` worse than the previous one. The halt reason names
both numbers and their 95% intervals.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.rollouts.core import (
    GateResult,
    InvalidRolloutError,
    StageCounts,
    Verdict,
    register_gate_type,
)
from control_plane.telemetry.estimates import QuantileEstimate, RateEstimate
from protocol.telemetry import SensitiveField

__all__ = [
    "HISTOGRAM_OF",
    "LATENCY_METRICS",
    "SIGNALS_KEY",
    "ErrorRateRegression",
    "LatencyRegression",
    "MetricComparison",
    "RateComparison",
    "TelemetrySignals",
    "telemetry_gate_specs",
]

SIGNALS_KEY = "telemetry"
RUNBOOK = "docs/runbooks/cp-telemetry-gate-halted.md"

# gate metric -> what it is called in a reason
LATENCY_METRICS: Mapping[str, str] = {
    "chat_ttft": "time to first token",
    "chat_time_per_token": "time per output token",
    "completion": "completion latency",
    "embedding": "embedding latency",
    "vision": "vision latency",
    "rag": "RAG query latency",
}
# gate metric -> the report's histogram it reads (protocol.telemetry.HISTOGRAM_EDGES)
HISTOGRAM_OF: Mapping[str, SensitiveField] = {
    "chat_ttft": "chat_ttft_seconds",
    "chat_time_per_token": "chat_time_per_output_token_seconds",
    "completion": "completion_seconds",
    "embedding": "embedding_seconds",
    "vision": "vision_seconds",
    "rag": "rag_seconds",
}


@dataclass(frozen=True)
class MetricComparison:
    """One latency quantile on the new release (its stage's devices) and on the previous
    release (the same cohort)."""

    candidate: QuantileEstimate
    baseline: QuantileEstimate | None
    candidate_release: str
    baseline_release: str | None


@dataclass(frozen=True)
class RateComparison:
    candidate: RateEstimate
    baseline: RateEstimate | None
    candidate_devices: int
    candidate_release: str
    baseline_release: str | None


@dataclass(frozen=True)
class TelemetrySignals:
    """What the telemetry service measured for one rollout pass, by gate metric."""

    latency: Mapping[tuple[str, float], MetricComparison]
    error_rate: RateComparison | None = None


def _signals(counts: StageCounts) -> TelemetrySignals | None:
    value = counts.signals.get(SIGNALS_KEY)
    return value if isinstance(value, TelemetrySignals) else None


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.0f} ms"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%".replace(".0%", "%")


def _too_few_moved(counts: StageCounts, min_sample: int, name: str) -> GateResult | None:
    """A stage that cannot reach the sample passes unjudged (a later stage will judge),
    the way the failure-rate gate treats it."""
    if counts.committed >= min_sample:
        return None
    return GateResult(
        name,
        Verdict.PASS,
        f"{counts.committed} devices committed, fewer than the telemetry minimum sample"
        f" {min_sample}: judged at a later stage",
        {"committed": counts.committed, "min_sample": min_sample},
    )


@dataclass(frozen=True)
class LatencyRegression:
    """Halt when the new release's ``quantile`` of ``metric`` is more than
    ``max_regression`` (0.2 = 20%) above the previous release's on the same cohort."""

    metric: str
    max_regression: float
    min_sample: int
    quantile: float = 0.95
    min_observations: int = 20

    @property
    def name(self) -> str:
        return f"{self.metric}_p{round(self.quantile * 100)}_regression"

    def evaluate(self, counts: StageCounts) -> GateResult:
        name = self.name
        signals = _signals(counts)
        comparison = None if signals is None else signals.latency.get((self.metric, self.quantile))
        what = f"p{round(self.quantile * 100)} {LATENCY_METRICS[self.metric]}"
        numbers: dict[str, Any] = {
            "metric": self.metric,
            "quantile": self.quantile,
            "max_regression": self.max_regression,
            "min_sample": self.min_sample,
        }
        if comparison is None or comparison.candidate.devices < self.min_sample:
            skipped = _too_few_moved(counts, self.min_sample, name)
            if skipped is not None:
                return skipped
            reporting = 0 if comparison is None else comparison.candidate.devices
            numbers["devices"] = reporting
            return GateResult(
                name,
                Verdict.WAIT,
                f"{what}: {reporting} of the minimum {self.min_sample} devices have sent"
                " telemetry on the new release",
                numbers,
            )
        new, old = comparison.candidate, comparison.baseline
        numbers.update(_quantile_numbers("candidate", new))
        if new.observations < self.min_observations or new.value is None:
            return GateResult(
                name,
                Verdict.WAIT,
                f"{what}: about {new.observations:.0f} requests measured on the new release,"
                f" fewer than the minimum {self.min_observations}",
                numbers,
            )
        if old is None or old.value is None or old.value <= 0:
            return GateResult(
                name,
                Verdict.PASS,
                f"{what} {new.describe()} on the new release; no telemetry from the previous"
                " release on this cohort to compare with",
                numbers,
            )
        numbers.update(_quantile_numbers("baseline", old))
        ratio = new.value / old.value - 1.0
        numbers["regression"] = round(ratio, 4)
        detail = (
            f"{what} {new.describe()} on {comparison.candidate_release} ({new.devices} devices)"
            f" vs {old.describe()} on {comparison.baseline_release} ({old.devices} devices):"
            f" {'+' if ratio >= 0 else ''}{_pct(ratio)}"
        )
        if ratio > self.max_regression:
            return GateResult(
                name,
                Verdict.HALT,
                f"{detail}, more than the allowed +{_pct(self.max_regression)} (see {RUNBOOK})",
                numbers,
            )
        return GateResult(
            name, Verdict.PASS, f"{detail}, within +{_pct(self.max_regression)}", numbers
        )

    def spec(self) -> dict[str, Any]:
        return {
            "type": "latency_regression",
            "metric": self.metric,
            "quantile": self.quantile,
            "max_regression": self.max_regression,
            "min_sample": self.min_sample,
            "min_observations": self.min_observations,
        }


def _quantile_numbers(prefix: str, estimate: QuantileEstimate) -> dict[str, Any]:
    return {
        f"{prefix}_seconds": estimate.value,
        f"{prefix}_low_seconds": estimate.low,
        f"{prefix}_high_seconds": estimate.high,
        f"{prefix}_devices": estimate.devices,
        f"{prefix}_observations": round(estimate.observations, 1),
    }


@dataclass(frozen=True)
class ErrorRateRegression:
    """Halt when the new release's error rate (errors per request) exceeds the previous
    release's by more than ``max_increase`` in absolute terms (0.02 = two points)."""

    max_increase: float
    min_sample: int
    min_observations: int = 20

    def evaluate(self, counts: StageCounts) -> GateResult:
        name = "error_rate_regression"
        signals = _signals(counts)
        comparison = None if signals is None else signals.error_rate
        numbers: dict[str, Any] = {
            "max_increase": self.max_increase,
            "min_sample": self.min_sample,
        }
        if comparison is None or comparison.candidate_devices < self.min_sample:
            skipped = _too_few_moved(counts, self.min_sample, name)
            if skipped is not None:
                return skipped
            reporting = 0 if comparison is None else comparison.candidate_devices
            return GateResult(
                name,
                Verdict.WAIT,
                f"error rate: {reporting} of the minimum {self.min_sample} devices have sent"
                " telemetry on the new release",
                numbers,
            )
        new, old = comparison.candidate, comparison.baseline
        requests = new.denominator.estimate
        numbers.update(rate=new.rate, low=new.low, high=new.high, requests=round(requests, 1))
        if new.rate is None or requests < self.min_observations:
            return GateResult(
                name,
                Verdict.WAIT,
                f"error rate: about {requests:.0f} requests on the new release, fewer than"
                f" the minimum {self.min_observations}",
                numbers,
            )
        if old is None or old.rate is None:
            return GateResult(
                name,
                Verdict.PASS,
                f"error rate {_rate(new)} on the new release; nothing to compare with",
                numbers,
            )
        numbers.update(baseline_rate=old.rate, baseline_low=old.low, baseline_high=old.high)
        increase = new.rate - old.rate
        detail = (
            f"error rate {_rate(new)} on {comparison.candidate_release} vs {_rate(old)} on"
            f" {comparison.baseline_release}"
        )
        if increase > self.max_increase:
            return GateResult(
                name,
                Verdict.HALT,
                f"{detail}: up {_pct(increase)}, more than the allowed {_pct(self.max_increase)}"
                f" (see {RUNBOOK})",
                numbers,
            )
        return GateResult(
            name, Verdict.PASS, f"{detail}: within +{_pct(self.max_increase)}", numbers
        )

    def spec(self) -> dict[str, Any]:
        return {
            "type": "error_rate_regression",
            "max_increase": self.max_increase,
            "min_sample": self.min_sample,
            "min_observations": self.min_observations,
        }


def _rate(estimate: RateEstimate) -> str:
    if estimate.rate is None:
        return "n/a"
    return (
        f"{_pct(estimate.rate)} [95% CI {_pct(estimate.low or 0.0)}-{_pct(estimate.high or 0.0)}]"
    )


def _number(spec: Mapping[str, Any], key: str, low: float, high: float, default: Any) -> float:
    value = spec.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRolloutError(key, "must be a number")
    if not low <= value <= high:
        raise InvalidRolloutError(key, f"{value:g} is out of range [{low:g}, {high:g}]")
    return float(value)


def _latency(spec: Mapping[str, Any]) -> LatencyRegression:
    metric = spec.get("metric")
    if metric not in LATENCY_METRICS:
        raise InvalidRolloutError(
            "metric", f"{metric!r} is not one of {', '.join(sorted(LATENCY_METRICS))}"
        )
    return LatencyRegression(
        metric=str(metric),
        max_regression=_number(spec, "max_regression", 0.0, 100.0, None),
        min_sample=int(_number(spec, "min_sample", 1, 1_000_000, 5)),
        quantile=_number(spec, "quantile", 0.5, 0.99, 0.95),
        min_observations=int(_number(spec, "min_observations", 1, 10_000_000, 20)),
    )


def _error_rate(spec: Mapping[str, Any]) -> ErrorRateRegression:
    return ErrorRateRegression(
        max_increase=_number(spec, "max_increase", 0.0, 1.0, None),
        min_sample=int(_number(spec, "min_sample", 1, 1_000_000, 5)),
        min_observations=int(_number(spec, "min_observations", 1, 10_000_000, 20)),
    )


TELEMETRY_GATE_TYPES = ("latency_regression", "error_rate_regression")
register_gate_type("latency_regression", _latency)
register_gate_type("error_rate_regression", _error_rate)


def telemetry_gate_specs(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The telemetry gates inside a stored gate spec (composites searched), so that the
    service measures only what some gate reads."""
    kind = spec.get("type")
    if kind in TELEMETRY_GATE_TYPES:
        return [spec]
    found: list[Mapping[str, Any]] = []
    for inner in spec.get("gates", []) if kind in ("all_of", "any_of") else []:
        if isinstance(inner, Mapping):
            found.extend(telemetry_gate_specs(inner))
    return found
