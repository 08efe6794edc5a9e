"""The background worker that drives every running rollout, on each replica.

Each tick judges every active rollout once (a replica that finds a rollout locked by
another skips it); cohort defaults are converged at most every ``converge_seconds`` (the
pass reads the whole fleet: 5.8 s at 100,000 devices here). The app's lifespan starts it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Protocol

from control_plane.rollouts.core import Step


class RolloutPasses(Protocol):
    """What the worker drives (``RolloutService``)."""

    def active_ids(self) -> list[str]: ...

    def advance(self, rollout_id: str, now: datetime) -> Step | None: ...

    def converge_defaults(self, now: datetime) -> int: ...


log = logging.getLogger(__name__)


class RolloutWorker:
    name = "rollouts"

    def __init__(
        self, service: RolloutPasses, interval_seconds: float, converge_seconds: float = 30.0
    ) -> None:
        self.service = service
        self.interval_seconds = interval_seconds
        self.converge_seconds = converge_seconds
        self._converged_at: datetime | None = None

    def tick(self, now: datetime) -> None:
        for rollout_id in self.service.active_ids():
            try:
                step = self.service.advance(rollout_id, now)
            except Exception:
                log.exception("advancing rollout %s failed; retrying next tick", rollout_id)
                continue
            if step is not None and step.value not in ("wait", "await_approval"):
                log.info("rollout %s: %s", rollout_id, step.value)
        if self._converged_at is not None and (
            (now - self._converged_at).total_seconds() < self.converge_seconds
        ):
            return
        self._converged_at = now
        moved = self.service.converge_defaults(now)
        if moved:
            log.info("cohort defaults: assigned %d devices their cohort's release", moved)
