"""The ``acceptance_pass_rate`` gate (pure): the share of a rollout's devices whose
on-device acceptance check passed, from ``StageCounts.signals["acceptance"]`` (filled by
:func:`control_plane.releases.qualification.rollout_acceptance_signals`)::

    {"type": "acceptance_pass_rate", "min_rate": 0.95, "min_sample": 1}

It waits until ``min_sample`` devices have reported a check, halts when fewer than
``min_rate`` of those that reported passed, and passes otherwise. Only devices whose
release sets thresholds for their class report a check (docs/device-tests.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.rollouts.core import (
    Gate,
    GateResult,
    StageCounts,
    Verdict,
    _number,
    _pct,
    register_gate_type,
)

__all__ = ["AcceptancePassRate"]

_NAME = "acceptance_pass_rate"


@dataclass(frozen=True)
class AcceptancePassRate:
    min_rate: float = 0.95
    min_sample: int = 1

    def evaluate(self, counts: StageCounts) -> GateResult:
        signal = counts.signals.get("acceptance") or {}
        reported, passed = int(signal.get("reported", 0)), int(signal.get("passed", 0))
        rate = passed / reported if reported else 0.0
        numbers = {
            "reported": reported,
            "passed": passed,
            "rate": round(rate, 4),
            "min_rate": self.min_rate,
            "min_sample": self.min_sample,
        }
        if reported < self.min_sample:
            return GateResult(
                _NAME,
                Verdict.WAIT,
                f"{reported} of the {counts.moved} devices moved have reported an acceptance"
                f" check, fewer than the minimum sample {self.min_sample} (does the release"
                " set thresholds for their device class?)",
                numbers,
            )
        detail = (
            f"{passed} of {reported} devices passed their acceptance check"
            f" ({_pct(rate)} {'<' if rate < self.min_rate else '>='} {_pct(self.min_rate)})"
        )
        verdict = Verdict.HALT if rate < self.min_rate else Verdict.PASS
        return GateResult(_NAME, verdict, detail, numbers)

    def spec(self) -> dict[str, Any]:
        return {"type": _NAME, "min_rate": self.min_rate, "min_sample": self.min_sample}


def _from_spec(spec: Mapping[str, Any]) -> Gate:
    return AcceptancePassRate(
        min_rate=_number({"min_rate": 0.95, **spec}, "min_rate", 0.0, 1.0, "a fraction"),
        min_sample=int(_number({"min_sample": 1, **spec}, "min_sample", 1, 1_000_000, "devices")),
    )


register_gate_type(_NAME, _from_spec)
