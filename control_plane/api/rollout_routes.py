"""Rollout API (operator): create, list, show, pause, resume, approve, abort."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from control_plane.api.dependencies import CP, Assigner, Reader
from control_plane.api.rollout_wire import RolloutAbort, RolloutCreate, RolloutPublic
from control_plane.rollouts.core import Action
from control_plane.rollouts.service import RolloutRequest

router = APIRouter(prefix="/api/v1/rollouts")


@router.post("", status_code=status.HTTP_201_CREATED)
def create_rollout(body: RolloutCreate, operator: Assigner, cp: CP) -> RolloutPublic:
    """Start a staged rollout of a release, or of a config patch, to a cohort; stage 1 is
    assigned at once."""
    request = RolloutRequest.of(
        release=body.release,
        config=body.config,
        cohort=body.cohort,
        stages=body.stages,
        max_failure_rate=body.max_failure_rate,
        min_sample=body.min_sample,
        stage_timeout_seconds=body.stage_timeout_seconds,
        max_failures=body.max_failures,
        manual_approval=body.manual_approval,
        extra_gates=body.gates,
        require_qualification=body.require_qualification,
    )
    rollout = cp.rollouts.create(request, actor=operator.actor, now=cp.clock())
    return RolloutPublic.of(cp.rollouts.view(rollout.id))


@router.get("")
def list_rollouts(
    _viewer: Reader, cp: CP, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> list[RolloutPublic]:
    return [RolloutPublic.of(v) for v in cp.rollouts.views(limit=limit)]


@router.get("/{rollout_id}")
def show_rollout(rollout_id: str, _viewer: Reader, cp: CP) -> RolloutPublic:
    return RolloutPublic.of(cp.rollouts.view(rollout_id))


def _act(
    cp: CP, rollout_id: str, action: Action, actor: str, roll_back: bool = True
) -> RolloutPublic:
    cp.rollouts.act(rollout_id, action, actor=actor, now=cp.clock(), roll_back=roll_back)
    return RolloutPublic.of(cp.rollouts.view(rollout_id))


@router.post("/{rollout_id}/pause")
def pause_rollout(rollout_id: str, operator: Assigner, cp: CP) -> RolloutPublic:
    """Stop advancing and assigning (devices already moved keep their assignment)."""
    return _act(cp, rollout_id, Action.PAUSE, operator.actor)


@router.post("/{rollout_id}/resume")
def resume_rollout(rollout_id: str, operator: Assigner, cp: CP) -> RolloutPublic:
    """Go on; the stage timeout restarts for devices still pending."""
    return _act(cp, rollout_id, Action.RESUME, operator.actor)


@router.post("/{rollout_id}/approve")
def approve_stage(rollout_id: str, operator: Assigner, cp: CP) -> RolloutPublic:
    """Approve leaving the current stage (rollouts created with manual approval)."""
    return _act(cp, rollout_id, Action.APPROVE, operator.actor)


@router.post("/{rollout_id}/abort")
def abort_rollout(
    rollout_id: str, operator: Assigner, cp: CP, body: RolloutAbort | None = None
) -> RolloutPublic:
    """Stop for good; by default every moved device is re-assigned its prior release."""
    roll_back = True if body is None else body.roll_back
    return _act(cp, rollout_id, Action.ABORT, operator.actor, roll_back)
