"""Background worker: fold new telemetry reports into their hourly aggregates, and apply
retention once an hour."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from control_plane.telemetry.service import TelemetryService

PRUNE_EVERY = timedelta(hours=1)
MAX_BATCHES_PER_TICK = 20


@dataclass
class TelemetryWorker:
    service: TelemetryService
    interval_seconds: float
    name: str = "telemetry"
    _pruned_at: datetime | None = field(default=None, repr=False)

    def tick(self, now: datetime) -> None:
        batch = 2000
        for _ in range(MAX_BATCHES_PER_TICK):
            if self.service.aggregate_pending(now, batch=batch) < batch:
                break
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self.service.prune(now)
            self._pruned_at = now
