"""Privacy accounting, pure: which budget period a moment falls in, and whether a
report's charge still fits the per-period and lifetime caps.

The ledger itself (append-only rows in the state database) lives in
:mod:`edge_agent.telemetry.store`; these functions decide over its sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from protocol.telemetry import WithheldReason

__all__ = ["BudgetWindow", "Spent", "budget_window", "withhold_reason"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# float sums of many small epsilons: a charge within this of the cap still fits
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BudgetWindow:
    """A budget period: ``[start, end)``, aligned to the Unix epoch, so every restart
    and every device agree where periods begin."""

    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        """How the ledger names the period (its start, ISO 8601 UTC)."""
        return self.start.isoformat()


def budget_window(now: datetime, period_seconds: float) -> BudgetWindow:
    if period_seconds <= 0:
        raise ValueError("a budget period must be longer than zero seconds")
    elapsed = (now.astimezone(UTC) - _EPOCH).total_seconds()
    index = int(elapsed // period_seconds)
    start = _EPOCH + timedelta(seconds=index * period_seconds)
    return BudgetWindow(start, start + timedelta(seconds=period_seconds))


@dataclass(frozen=True)
class Spent:
    """Epsilon charged so far: in the current budget period, and ever."""

    period: float
    lifetime: float


def withhold_reason(
    spent: Spent, charge: float, *, period_cap: float, lifetime_cap: float
) -> WithheldReason | None:
    """None if ``charge`` fits both caps; otherwise why the usage fields are withheld
    (the lifetime cap first: it never renews)."""
    if spent.lifetime + charge > lifetime_cap + _TOLERANCE:
        return "lifetime_budget_spent"
    if spent.period + charge > period_cap + _TOLERANCE:
        return "period_budget_spent"
    return None
