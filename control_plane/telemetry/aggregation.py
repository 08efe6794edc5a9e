"""Folding telemetry reports into aggregates: the pure core.

A report is first reduced to :class:`ReportFacts` (what the estimates need: bucket counts
and the variance of their noise, counters with theirs, the epsilon the device spent, what
it withheld). Facts fold into an :class:`Aggregate`, the unit stored per release x cohort x
device class x hour; aggregates merge into larger windows the same way (sums of values and
of variances), so an hourly row and a week of rows answer the same questions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from control_plane.telemetry.estimates import (
    CountEstimate,
    NoisyValue,
    QuantileEstimate,
    RateEstimate,
    estimate_quantile,
    estimate_rate,
    estimate_sum,
)

__all__ = ["Aggregate", "HistogramFacts", "ReportFacts", "hour_of"]


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in (the aggregates' time key)."""
    return moment.replace(minute=0, second=0, microsecond=0)


def hours_between(start: datetime, end: datetime) -> list[datetime]:
    hours = []
    hour = hour_of(start)
    while hour <= end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


@dataclass(frozen=True)
class HistogramFacts:
    """Bucket counts of one latency histogram (one more bucket than edges: the last is
    open) and the noise variance of each count (0 for an exact histogram)."""

    counts: tuple[float, ...]
    variances: tuple[float, ...]


@dataclass(frozen=True)
class ReportFacts:
    """One report, reduced to what aggregates keep."""

    histograms: Mapping[str, HistogramFacts]
    counters: Mapping[str, NoisyValue]
    epsilon: float = 0.0
    withheld: tuple[str, ...] = ()
    dropped: int = 0


@dataclass
class _Sum:
    value: float = 0.0
    variance: float = 0.0
    reports: int = 0


@dataclass
class Aggregate:
    """Summed facts of many reports. Mutable while folding; ``as_json``/``from_json`` store
    it (one JSON document per hourly row)."""

    reports: int = 0
    histograms: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    counters: dict[str, _Sum] = field(default_factory=dict)
    epsilon: float = 0.0
    withheld: dict[str, int] = field(default_factory=dict)
    dropped: int = 0
    devices: set[str] = field(default_factory=set)

    def add(self, facts: ReportFacts, device_id: str | None = None) -> None:
        self.reports += 1
        for name, hist in facts.histograms.items():
            mine = self.histograms.get(name)
            if mine is None:
                self.histograms[name] = (list(hist.counts), list(hist.variances))
                continue
            counts, variances = mine
            if len(counts) != len(hist.counts):
                raise ValueError(
                    f"histogram {name!r}: {len(hist.counts)} buckets, {len(counts)} before"
                )
            for i, (c, v) in enumerate(zip(hist.counts, hist.variances, strict=True)):
                counts[i] += c
                variances[i] += v
        for name, value in facts.counters.items():
            total = self.counters.setdefault(name, _Sum())
            total.value += value.value
            total.variance += value.variance
            total.reports += 1
        self.epsilon += facts.epsilon
        for name in facts.withheld:
            self.withheld[name] = self.withheld.get(name, 0) + 1
        self.dropped += facts.dropped
        if device_id is not None:
            self.devices.add(device_id)

    def merge(self, other: Aggregate) -> None:
        self.reports += other.reports
        for name, (counts, variances) in other.histograms.items():
            mine = self.histograms.get(name)
            if mine is None:
                self.histograms[name] = (list(counts), list(variances))
                continue
            for i in range(len(counts)):
                mine[0][i] += counts[i]
                mine[1][i] += variances[i]
        for name, total in other.counters.items():
            mine_total = self.counters.setdefault(name, _Sum())
            mine_total.value += total.value
            mine_total.variance += total.variance
            mine_total.reports += total.reports
        self.epsilon += other.epsilon
        for name, n in other.withheld.items():
            self.withheld[name] = self.withheld.get(name, 0) + n
        self.dropped += other.dropped
        self.devices |= other.devices

    @classmethod
    def of(cls, items: Iterable[Aggregate]) -> Aggregate:
        total = cls()
        for item in items:
            total.merge(item)
        return total

    # --- estimates -------------------------------------------------------------------

    def count(self, name: str) -> CountEstimate:
        """The fleet total of counter ``name`` with its 95% interval (0 when absent)."""
        total = self.counters.get(name)
        if total is None:
            return estimate_sum(())
        estimate = estimate_sum([NoisyValue(total.value, total.variance)])
        return CountEstimate(
            estimate.estimate, estimate.variance, estimate.low, estimate.high, total.reports
        )

    def total(self, names: Sequence[str]) -> CountEstimate:
        """The sum of several counters (e.g. every error class) as one estimate."""
        parts = [self.counters[n] for n in names if n in self.counters]
        estimate = estimate_sum([NoisyValue(p.value, p.variance) for p in parts])
        return CountEstimate(
            estimate.estimate,
            estimate.variance,
            estimate.low,
            estimate.high,
            max((p.reports for p in parts), default=0),
        )

    def rate(self, numerator: Sequence[str], denominator: Sequence[str]) -> RateEstimate:
        return estimate_rate(self.total(numerator), self.total(denominator))

    def quantile(
        self,
        name: str,
        edges: Sequence[float],
        q: float,
        rng: np.random.Generator,
        *,
        devices: int | None = None,
    ) -> QuantileEstimate:
        hist = self.histograms.get(name)
        reporting = len(self.devices) if devices is None else devices
        if hist is None:
            return QuantileEstimate(q, None, None, None, 0.0, reporting)
        counts, variances = hist
        return estimate_quantile(counts, variances, edges, q, rng, devices=reporting)

    # --- storage ---------------------------------------------------------------------

    def as_json(self) -> dict[str, Any]:
        return {
            "reports": self.reports,
            "histograms": {k: [c, v] for k, (c, v) in sorted(self.histograms.items())},
            "counters": {
                k: [s.value, s.variance, s.reports] for k, s in sorted(self.counters.items())
            },
            "epsilon": self.epsilon,
            "withheld": dict(sorted(self.withheld.items())),
            "dropped": self.dropped,
            "devices": len(self.devices),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Aggregate:
        """A stored aggregate (device ids are not stored: ``devices`` is empty)."""
        return cls(
            reports=int(data.get("reports", 0)),
            histograms={
                k: ([float(x) for x in c], [float(x) for x in v])
                for k, (c, v) in data.get("histograms", {}).items()
            },
            counters={
                k: _Sum(float(s[0]), float(s[1]), int(s[2]))
                for k, s in data.get("counters", {}).items()
            },
            epsilon=float(data.get("epsilon", 0.0)),
            withheld={k: int(n) for k, n in data.get("withheld", {}).items()},
            dropped=int(data.get("dropped", 0)),
        )
