"""Building a telemetry report, pure: a period's counts, the policy, the ledger's sums
and a noise mechanism in; a :class:`protocol.telemetry.TelemetryReport` out.

The per-report epsilon is split over the fields the policy releases, by weight; each
field is clamped, then noised at ``scale = sensitivity / epsilon_field``; its cost is the
mechanism's own privacy map at that scale. When the whole charge does not fit the
period or lifetime cap, every usage field is withheld with the reason, and nothing is
charged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from edge_agent.telemetry.ledger import BudgetWindow, Spent, withhold_reason
from edge_agent.telemetry.mechanisms import NoiseMechanism, clamp_counts
from edge_agent.telemetry.policy import FieldRule, TelemetryPolicy
from protocol.telemetry import (
    SENSITIVE_FIELDS,
    SENSITIVITY,
    BudgetState,
    OperationalFields,
    PolicyRef,
    ReleasedCounts,
    SensitiveField,
    TelemetryReport,
    UsageFields,
    Withheld,
    WithheldReason,
)

__all__ = ["FieldPlan", "ReportContext", "build_report", "plan_release"]


@dataclass(frozen=True)
class FieldPlan:
    rule: FieldRule
    scale: float
    epsilon: float  # what the mechanism's privacy map says one release at ``scale`` costs


def plan_release(policy: TelemetryPolicy, mechanism: NoiseMechanism) -> dict[str, FieldPlan]:
    """The released fields and their scales (a field the policy does not release is
    absent)."""
    released = [r for r in policy.fields if r.release]
    total_weight = sum(r.weight for r in released)
    plans: dict[str, FieldPlan] = {}
    for rule in released:
        share = policy.epsilon_per_report * rule.weight / total_weight
        scale = SENSITIVITY / share
        plans[rule.field] = FieldPlan(rule, scale, mechanism.epsilon(scale, SENSITIVITY))
    return plans


@dataclass(frozen=True)
class ReportContext:
    """Everything about the report that is not a usage count."""

    report_id: str
    device_id: str
    sequence: int
    period_start: datetime
    period_end: datetime
    release_id: str | None
    device_class: str
    operational: OperationalFields
    outbox_dropped: int
    spent: Spent  # the ledger before this report
    window: BudgetWindow  # the budget period the report is charged to


def _usage(
    counts: Mapping[SensitiveField, Sequence[int]],
    plans: Mapping[str, FieldPlan],
    withheld: WithheldReason | None,
    mechanism: NoiseMechanism,
) -> UsageFields:
    values: dict[str, ReleasedCounts | Withheld] = {}
    for name in SENSITIVE_FIELDS:
        plan = plans.get(name)
        if plan is None:
            values[name] = Withheld(reason="not_in_policy")
        elif withheld is not None:
            values[name] = Withheld(reason=withheld)
        else:
            clamped = clamp_counts(counts[name], plan.rule.clamp)
            values[name] = ReleasedCounts(
                mechanism=mechanism.name,
                scale=plan.scale,
                epsilon=plan.epsilon,
                sensitivity=SENSITIVITY,
                clamp_lower=0,
                clamp_upper=plan.rule.clamp,
                values=mechanism.release(clamped, plan.scale),
            )
    return UsageFields.model_validate(values)


def build_report(
    ctx: ReportContext,
    counts: Mapping[SensitiveField, Sequence[int]],
    policy: TelemetryPolicy,
    mechanism: NoiseMechanism,
) -> TelemetryReport:
    """The period's report: usage released within the budget, or withheld with why."""
    plans = plan_release(policy, mechanism)
    charge = sum(p.epsilon for p in plans.values())
    reason = withhold_reason(
        ctx.spent,
        charge,
        period_cap=policy.epsilon_per_period,
        lifetime_cap=policy.epsilon_lifetime,
    )
    usage = _usage(counts, plans, reason, mechanism)
    charged = usage.epsilon_spent()
    return TelemetryReport(
        report_id=ctx.report_id,
        device_id=ctx.device_id,
        sequence=ctx.sequence,
        period_start=ctx.period_start,
        period_end=ctx.period_end,
        release_id=ctx.release_id,
        device_class=ctx.device_class,
        policy=PolicyRef(source=policy.source, digest=policy.digest),
        operational=ctx.operational,
        usage=usage,
        privacy=BudgetState(
            epsilon_charged=charged,
            period_start=ctx.window.start,
            period_end=ctx.window.end,
            period_spent=ctx.spent.period + charged,
            period_cap=policy.epsilon_per_period,
            lifetime_spent=ctx.spent.lifetime + charged,
            lifetime_cap=policy.epsilon_lifetime,
        ),
        outbox_dropped=ctx.outbox_dropped,
    )
