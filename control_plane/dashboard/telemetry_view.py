"""The telemetry page: latency plots, error rates and the privacy budget per device class,
from the control plane's telemetry estimates (pure over the values its service returns;
the intervals are the service's, which account for the devices' privacy noise)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup

from control_plane.dashboard.plots import Point, Series, line_chart
from control_plane.telemetry.gates import LATENCY_METRICS
from control_plane.telemetry.service import ErrorRatePoint, LatencyPoint, PrivacyBudgetRow

# The metrics the page plots, in this order (the four; completion and embedding
# latency are served by /metrics).
PLOTTED = ("chat_ttft", "chat_time_per_token", "vision", "rag")
MAX_ERROR_ROWS = 48


@dataclass(frozen=True)
class Plot:
    metric: str
    title: str
    svg: Markup


@dataclass(frozen=True)
class ErrorRow:
    hour: datetime
    release: str
    device_class: str
    requests: float
    errors: float
    rate: float | None
    low: float | None
    high: float | None
    reports: int


@dataclass(frozen=True)
class BudgetRow:
    device_class: str
    devices: int
    reports: int
    epsilon_spent: float
    epsilon_per_report: float
    withheld: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class TelemetryPage:
    plots: tuple[Plot, ...]
    errors: tuple[ErrorRow, ...]
    budget: tuple[BudgetRow, ...]

    @property
    def empty(self) -> bool:
        return not self.plots and not self.errors and not self.budget


def _release(names: Mapping[str, str], release_id: str) -> str:
    return names.get(release_id, release_id or "no release")


def latency_plot(
    metric: str, points: Sequence[LatencyPoint], release_names: Mapping[str, str]
) -> Plot | None:
    """One series per release x device class: p50 and p95 per hour, the p95's interval
    as a band; hours whose estimate is empty are left out."""
    series: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        if p.p50.value is None or p.p95.value is None:
            continue
        label = (
            f"{release_names.get(p.release_id, p.release_id or 'no release')} on {p.device_class}"
        )
        series[label].append(
            Point(
                at=p.hour,
                p50=p.p50.value,
                p95=p.p95.value,
                p95_low=p.p95.value if p.p95.low is None else p.p95.low,
                p95_high=p.p95.value if p.p95.high is None else p.p95.high,
            )
        )
    if not series:
        return None
    title = LATENCY_METRICS[metric]
    svg = line_chart(
        f"{title}: p50 (dashed), p95 (solid) and its 95% interval",
        [Series(label=k, points=v) for k, v in sorted(series.items())],
    )
    return Plot(metric=metric, title=title, svg=svg)


def error_rows(
    points: Sequence[ErrorRatePoint], release_names: Mapping[str, str]
) -> tuple[ErrorRow, ...]:
    """The newest hours first, at most :data:`MAX_ERROR_ROWS`."""
    newest = sorted(points, key=lambda p: (p.hour, p.release_id, p.device_class), reverse=True)
    return tuple(
        ErrorRow(
            hour=p.hour,
            release=_release(release_names, p.release_id),
            device_class=p.device_class,
            requests=p.rate.denominator.estimate,
            errors=p.rate.numerator.estimate,
            rate=p.rate.rate,
            low=p.rate.low,
            high=p.rate.high,
            reports=p.reports,
        )
        for p in newest[:MAX_ERROR_ROWS]
    )


def budget_rows(rows: Sequence[PrivacyBudgetRow]) -> tuple[BudgetRow, ...]:
    return tuple(
        BudgetRow(
            device_class=r.device_class,
            devices=r.devices,
            reports=r.reports,
            epsilon_spent=r.epsilon_spent,
            epsilon_per_report=r.epsilon_per_report,
            withheld=tuple(sorted(r.withheld.items())),
        )
        for r in rows
    )


def telemetry_page(
    latency: Mapping[str, Sequence[LatencyPoint]],
    errors: Sequence[ErrorRatePoint],
    budget: Sequence[PrivacyBudgetRow],
    release_names: Mapping[str, str],
) -> TelemetryPage:
    plots = (latency_plot(m, latency.get(m, ()), release_names) for m in PLOTTED)
    return TelemetryPage(
        plots=tuple(p for p in plots if p is not None),
        errors=error_rows(errors, release_names),
        budget=budget_rows(budget),
    )
