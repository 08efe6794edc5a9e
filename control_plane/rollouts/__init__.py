"""Staged rollouts: a pure core (``core``), the service that applies it to the fleet
(``service``) and the background worker that drives running rollouts (``worker``)."""

from control_plane.rollouts.acceptance_gate import AcceptancePassRate  # registers its type
from control_plane.rollouts.core import (
    Action,
    CohortSelector,
    Gate,
    GateResult,
    RolloutState,
    StageCounts,
    StagePlan,
    Verdict,
    register_gate_type,
)
from control_plane.rollouts.service import RolloutRequest, RolloutService, RolloutView
from control_plane.rollouts.worker import RolloutWorker

__all__ = [
    "AcceptancePassRate",
    "Action",
    "CohortSelector",
    "Gate",
    "GateResult",
    "RolloutRequest",
    "RolloutService",
    "RolloutState",
    "RolloutView",
    "RolloutWorker",
    "StageCounts",
    "StagePlan",
    "Verdict",
    "register_gate_type",
]
