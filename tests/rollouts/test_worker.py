"""The background worker: judges rollouts every tick, converges cohort defaults less often."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control_plane.rollouts.core import Step
from control_plane.rollouts.worker import RolloutWorker


class Recorder:
    def __init__(self) -> None:
        self.advanced: list[str] = []
        self.converged: list[datetime] = []

    def active_ids(self) -> list[str]:
        return ["ro_a", "ro_b"]

    def advance(self, rollout_id: str, now: datetime) -> Step | None:
        self.advanced.append(rollout_id)
        if rollout_id == "ro_a":
            raise RuntimeError("database went away")
        return Step.WAIT

    def converge_defaults(self, now: datetime) -> int:
        self.converged.append(now)
        return 0


def test_every_tick_judges_each_rollout_and_defaults_converge_on_their_own_interval() -> None:
    service = Recorder()
    worker = RolloutWorker(service, interval_seconds=1, converge_seconds=30)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    for second in range(0, 65, 5):
        worker.tick(start + timedelta(seconds=second))
    assert service.advanced.count("ro_b") == 13, "a failing rollout does not stop the others"
    assert [(t - start).seconds for t in service.converged] == [0, 30, 60]
