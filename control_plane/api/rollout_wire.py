"""Wire models of the rollout API (storage models live in ``control_plane.storage``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.api.wire import ReleaseRef
from control_plane.rollouts.service import RolloutView


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    release: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="release id or name@version (a release rollout)",
    )
    config: dict[str, Any] | None = Field(
        default=None,
        description="a config merge patch (a config rollout; give it or release, not both):"
        " each stage's devices get it as a layer between the tag and device layers",
    )
    cohort: str = Field(
        min_length=1,
        max_length=500,
        description="selector: comma-separated key=value / key!=value / ram_mb>=N terms; '*' = all",
    )
    stages: list[float] = Field(
        min_length=1, max_length=10, description="cumulative % of the cohort per stage"
    )
    max_failure_rate: float = Field(
        ge=0, le=1, description="halt when more than this fraction of decided devices failed"
    )
    min_sample: int = Field(ge=1, le=1_000_000, description="decided devices before judging")
    stage_timeout_seconds: int = Field(
        ge=1, le=30 * 24 * 3600, description="a device silent this long counts as failed"
    )
    max_failures: int | None = Field(default=None, ge=0, le=1_000_000)
    manual_approval: bool = Field(
        default=False, description="every stage but the last waits for 'rollout approve'"
    )
    gates: list[dict[str, Any]] = Field(
        default_factory=list, max_length=16, description="extra gate specs (by type)"
    )
    require_qualification: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="a device class: refuse to start until devices of that class have"
        " reported passing acceptance checks of the release (docs/device-tests.md)",
    )


class RolloutAbort(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roll_back: bool = Field(
        default=True, description="re-assign moved devices the release they ran before"
    )


class StagePublic(BaseModel):
    stage: int = Field(description="1-based")
    percent: float
    devices: int
    committed: int
    failed: int
    timed_out: int
    pending: int


class RolloutEventPublic(BaseModel):
    at: datetime
    actor: str
    kind: str
    stage: int = Field(description="1-based")
    message: str
    numbers: dict[str, Any]


class RolloutPublic(BaseModel):
    id: str
    kind: str = Field(description="release or config")
    release: ReleaseRef | None = Field(description="what a release rollout moves")
    config: dict[str, Any] | None = Field(description="what a config rollout moves")
    config_scope: str | None = Field(description="where a config rollout's patch goes at the end")
    cohort: str
    state: str
    stage: int = Field(description="1-based current stage")
    stages: list[StagePublic]
    plan: dict[str, Any]
    moved: int
    committed: int
    failed: int
    timed_out: int
    pending: int
    rolled_back: int
    reason: str
    created_at: datetime
    created_by: str
    updated_at: datetime
    finished_at: datetime | None
    events: list[RolloutEventPublic]

    @classmethod
    def of(cls, view: RolloutView) -> RolloutPublic:
        r, c = view.rollout, view.counts
        return cls(
            id=r.id,
            kind=r.kind,
            release=None
            if view.release is None
            else ReleaseRef(
                id=view.release.id, name=view.release.name, version=view.release.version
            ),
            config=r.config_patch,
            config_scope=r.config_scope,
            cohort=r.cohort,
            state=r.state,
            stage=r.stage + 1,
            stages=[
                StagePublic(
                    stage=s.stage + 1,
                    percent=s.percent,
                    devices=s.devices,
                    committed=s.committed,
                    failed=s.failed,
                    timed_out=s.timed_out,
                    pending=s.pending,
                )
                for s in view.stages
            ],
            plan=r.plan,
            moved=c.moved,
            committed=c.committed,
            failed=c.failed,
            timed_out=c.timed_out,
            pending=c.pending,
            rolled_back=view.rolled_back,
            reason=r.reason,
            created_at=r.created_at,
            created_by=r.created_by,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
            events=[
                RolloutEventPublic(
                    at=e.at,
                    actor=e.actor,
                    kind=e.kind,
                    stage=e.stage + 1,
                    message=e.message,
                    numbers=e.numbers,
                )
                for e in view.events
            ],
        )
