"""Rollouts as the dashboard shows them: stages, and every gate decision with its
numbers, flattened from the events the rollout engine stores (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from control_plane.errors import ConflictError
from control_plane.rollouts.core import Action, RolloutState, after_action
from control_plane.rollouts.service import RolloutView, StageView, subject


@dataclass(frozen=True)
class GateRow:
    """One gate's verdict inside a decision; ``depth`` > 0 for the parts of a composite."""

    gate: str
    verdict: str
    reason: str
    numbers: tuple[tuple[str, str], ...]
    depth: int


@dataclass(frozen=True)
class EventRow:
    at: datetime
    stage: int  # 1-based
    kind: str
    actor: str
    message: str
    gates: tuple[GateRow, ...]
    other_numbers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RolloutPage:
    id: str
    subject: str
    kind: str
    cohort: str
    state: str
    stage: int  # 1-based
    reason: str
    created_at: datetime
    created_by: str
    stages: tuple[StageView, ...]
    events: tuple[EventRow, ...]
    moved: int
    rolled_back: int
    actions: tuple[Action, ...]  # what an operator may do in this state

    @property
    def halted(self) -> bool:
        return self.state == RolloutState.HALTED.value


def _scalar(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _flat_numbers(numbers: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), _scalar(v)) for k, v in numbers.items() if not isinstance(v, list | dict))


def gate_rows(result: Mapping[str, Any], depth: int = 0) -> list[GateRow]:
    """A stored ``GateResult.as_json()`` and, below it, the parts of a composite gate."""
    numbers = result.get("numbers") or {}
    rows = [
        GateRow(
            gate=str(result.get("gate", "?")),
            verdict=str(result.get("verdict", "?")),
            reason=str(result.get("reason", "")),
            numbers=_flat_numbers(numbers),
            depth=depth,
        )
    ]
    for part in numbers.get("gates", []) if isinstance(numbers, Mapping) else []:
        if isinstance(part, Mapping):
            rows.extend(gate_rows(part, depth + 1))
    return rows


def event_row(
    at: datetime, stage: int, kind: str, actor: str, message: str, numbers: Mapping[str, Any]
) -> EventRow:
    is_gate = "gate" in numbers and "verdict" in numbers
    return EventRow(
        at=at,
        stage=stage + 1,
        kind=kind,
        actor=actor,
        message=message,
        gates=tuple(gate_rows(numbers)) if is_gate else (),
        other_numbers=() if is_gate else _flat_numbers(numbers),
    )


def allowed_actions(state: RolloutState) -> tuple[Action, ...]:
    """The operator actions the rollout engine accepts in ``state`` (its own rule)."""
    allowed = []
    for action in Action:
        try:
            after_action(state, action, "")
        except ConflictError:
            continue
        allowed.append(action)
    return tuple(allowed)


def rollout_page(view: RolloutView) -> RolloutPage:
    r = view.rollout
    try:
        state = RolloutState(r.state)
    except ValueError:
        state = None
    return RolloutPage(
        id=r.id,
        subject=subject(r),
        kind=r.kind,
        cohort=r.cohort,
        state=r.state,
        stage=r.stage + 1,
        reason=r.reason,
        created_at=r.created_at,
        created_by=r.created_by,
        stages=tuple(view.stages),
        events=tuple(
            event_row(e.at, e.stage, e.kind, e.actor, e.message, e.numbers or {})
            for e in view.events
        ),
        moved=view.counts.moved,
        rolled_back=view.rolled_back,
        actions=() if state is None else allowed_actions(state),
    )
