"""What telemetry ingest tolerates and how long what it stores is kept (from settings)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class TelemetryLimits:
    raw_retention: timedelta = timedelta(days=14)
    aggregate_retention: timedelta = timedelta(days=400)
    rate_limit_reports: int = 120
    rate_limit_window: timedelta = timedelta(minutes=10)
    baseline_window: timedelta = timedelta(hours=24)
    max_clock_skew: timedelta = timedelta(minutes=10)
