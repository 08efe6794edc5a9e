"""The telemetry page: latency plots, error rates and privacy budget per device class,
from what the control plane's telemetry service estimates (pure over its values).

The dashboard reads telemetry through :class:`TelemetryReads`; until a telemetry
service is part of the control plane, :class:`NoTelemetry` answers and the page says
"no telemetry yet".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from markupsafe import Markup

from control_plane.dashboard.plots import Point, Series, line_chart

LATENCY_METRICS: tuple[tuple[str, str], ...] = (
    ("ttft", "time to first token"),
    ("time_per_token", "time per output token"),
    ("vision", "vision inference"),
    ("rag", "RAG query"),
)


@dataclass(frozen=True)
class LatencyEstimate:
    """One hour's latency estimate for a release on a device class, in seconds."""

    metric: str
    release: str
    device_class: str
    hour: datetime
    p50: float
    p95: float
    p95_low: float
    p95_high: float
    samples: int


@dataclass(frozen=True)
class ErrorRate:
    release: str
    device_class: str
    requests: float
    errors: float
    rate: float
    rate_low: float
    rate_high: float


@dataclass(frozen=True)
class BudgetSpent:
    device_class: str
    devices: int
    epsilon_spent: float
    epsilon_cap: float
    withheld_reports: int


class TelemetryReads(Protocol):
    def latency(self, since: datetime) -> Sequence[LatencyEstimate]: ...

    def error_rates(self, since: datetime) -> Sequence[ErrorRate]: ...

    def privacy_budget(self, since: datetime) -> Sequence[BudgetSpent]: ...


class NoTelemetry:
    """The control plane collects no telemetry (yet)."""

    def latency(self, since: datetime) -> Sequence[LatencyEstimate]:
        return ()

    def error_rates(self, since: datetime) -> Sequence[ErrorRate]:
        return ()

    def privacy_budget(self, since: datetime) -> Sequence[BudgetSpent]:
        return ()


@dataclass(frozen=True)
class TelemetryPage:
    plots: tuple[tuple[str, Markup], ...]
    error_rates: tuple[ErrorRate, ...]
    budget: tuple[BudgetSpent, ...]

    @property
    def empty(self) -> bool:
        return not self.plots and not self.error_rates and not self.budget


def latency_plots(estimates: Sequence[LatencyEstimate]) -> tuple[tuple[str, Markup], ...]:
    """One plot per metric that has estimates, one series per release x device class."""
    by_metric: dict[str, dict[str, list[Point]]] = defaultdict(lambda: defaultdict(list))
    for e in estimates:
        by_metric[e.metric][f"{e.release} on {e.device_class}"].append(
            Point(at=e.hour, p50=e.p50, p95=e.p95, p95_low=e.p95_low, p95_high=e.p95_high)
        )
    plots = []
    for metric, title in LATENCY_METRICS:
        series = by_metric.get(metric)
        if not series:
            continue
        chart = line_chart(
            f"{title}: p50 (dashed) and p95 (solid, 95% interval shaded)",
            [Series(label=k, points=v) for k, v in sorted(series.items())],
        )
        plots.append((metric, chart))
    return tuple(plots)


def telemetry_page(reads: TelemetryReads, since: datetime) -> TelemetryPage:
    return TelemetryPage(
        plots=latency_plots(reads.latency(since)),
        error_rates=tuple(reads.error_rates(since)),
        budget=tuple(reads.privacy_budget(since)),
    )
