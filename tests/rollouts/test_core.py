"""The rollout rules on their own: selectors, buckets, stage plans, gates, decisions."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.errors import ConflictError
from control_plane.rollouts.core import (
    Action,
    AllOf,
    AnyOf,
    CohortSelector,
    FailureRate,
    GateResult,
    InvalidRolloutError,
    ManualApproval,
    MaxFailures,
    RolloutState,
    StageCounts,
    StagePlan,
    Step,
    Verdict,
    after_action,
    bucket_of,
    decide,
    gate_from_spec,
    register_gate_type,
)

PI = {"arch": "aarch64", "os": "linux", "cpu_count": 4, "ram_mb": 8192, "accelerators": []}
JETSON = {
    "arch": "aarch64",
    "os": "linux",
    "cpu_count": 6,
    "ram_mb": 4096,
    "accelerators": ["cuda"],
}


def counts(**kw: Any) -> StageCounts:
    base: dict[str, Any] = dict(
        stage=0, percent=10, is_last=False, committed=0, failed=0, timed_out=0, pending=0
    )
    base.update(kw)
    return StageCounts(**base)


# --- cohorts -------------------------------------------------------------------------


def test_selector_matches_tags_and_hardware_facts() -> None:
    sel = CohortSelector.parse("hw=rpi5, store!=porto, ram_mb>=4096")
    assert sel.text == "hw=rpi5,store!=porto,ram_mb>=4096"
    assert sel.matches(["hw=rpi5", "store=lisbon"], PI)
    assert not sel.matches(["hw=rpi5", "store=porto"], PI)
    assert not sel.matches(["hw=jetson"], PI)
    assert not CohortSelector.parse("ram_mb>=8192").matches([], JETSON)
    assert CohortSelector.parse("accelerator=cuda").matches([], JETSON)
    assert not CohortSelector.parse("accelerator=cuda").matches([], PI)
    assert CohortSelector.parse("*").matches([], PI)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("hw", "is not key=value"),
        ("store>=3", "compares only"),
        ("ram_mb>=lots", "not a number"),
        ("hw=rpi 5", "is not key=value"),
        ("x=" + "a" * 600, "longer than"),
    ],
)
def test_bad_selectors_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(InvalidRolloutError, match=says) as e:
        CohortSelector.parse(text)
    assert e.value.field == "cohort"


# --- buckets and stages -----------------------------------------------------------------


def test_buckets_are_stable_per_salt_and_spread_evenly() -> None:
    ids = [f"dev_{i}" for i in range(20_000)]
    first = [bucket_of("salt-a", d) for d in ids]
    assert first == [bucket_of("salt-a", d) for d in ids], "a restart never reshuffles"
    other = [bucket_of("salt-b", d) for d in ids]
    assert sum(a == b for a, b in zip(first, other, strict=True)) < 100, "fresh per rollout"
    plan = StagePlan.parse([1, 10, 50, 100])
    share = [sum(plan.covers(s, b) for b in first) / len(ids) for s in range(4)]
    assert share[0] == pytest.approx(0.01, abs=0.003)
    assert share[1] == pytest.approx(0.10, abs=0.01)
    assert share[2] == pytest.approx(0.50, abs=0.02)
    assert share[3] == 1.0


def test_stages_are_nested() -> None:
    plan = StagePlan.parse([1, 10, 50, 100])
    for b in range(0, 10_000, 7):
        first = plan.first_stage_of(b)
        assert first is not None
        assert all(plan.covers(s, b) for s in range(first, 4))
        assert not any(plan.covers(s, b) for s in range(first))


@pytest.mark.parametrize(
    ("stages", "says"),
    [
        ([], "at least one"),
        ([10, 5], "must increase"),
        ([10, 10], "must increase"),
        ([50, 101], "percentage"),
        ([0, 100], "percentage"),
        ([0.001, 100], "two decimals"),
        (list(range(1, 13)), "at most"),
    ],
)
def test_bad_stage_plans_are_refused(stages: list[float], says: str) -> None:
    with pytest.raises(InvalidRolloutError, match=says) as e:
        StagePlan.parse(stages)
    assert e.value.field == "stages"


# --- gates -----------------------------------------------------------------------------


def test_failure_rate_halts_once_the_sample_is_reached() -> None:
    gate = FailureRate(max_rate=0.05, min_sample=20)
    assert gate.evaluate(counts(committed=8, failed=2)).verdict is Verdict.PASS, (
        "a stage too small to judge passes (the rate is judged later)"
    )
    assert gate.evaluate(counts(committed=8, failed=2, pending=30)).verdict is Verdict.WAIT
    halted = gate.evaluate(counts(committed=27, failed=3, timed_out=1, pending=10))
    assert halted.verdict is Verdict.HALT
    assert "4 of 31" in halted.reason and "12.9% > 5%" in halted.reason
    assert gate.evaluate(counts(committed=99, failed=1)).verdict is Verdict.PASS
    assert gate.evaluate(counts(committed=90, failed=1, pending=9)).verdict is Verdict.WAIT


def test_max_failures_and_manual_approval() -> None:
    assert MaxFailures(2).evaluate(counts(failed=2)).verdict is Verdict.PASS
    assert MaxFailures(2).evaluate(counts(failed=2, timed_out=1)).verdict is Verdict.HALT
    assert ManualApproval().evaluate(counts()).verdict is Verdict.WAIT
    assert ManualApproval().evaluate(counts(approved=True)).verdict is Verdict.PASS
    assert ManualApproval().evaluate(counts(is_last=True)).verdict is Verdict.PASS


def test_composites_combine_verdicts() -> None:
    halt, wait = MaxFailures(0), ManualApproval()
    ok = MaxFailures(10)
    c = counts(committed=5, failed=1)
    assert AllOf((ok, halt, wait)).evaluate(c).verdict is Verdict.HALT
    assert AllOf((ok, wait)).evaluate(c).verdict is Verdict.WAIT
    assert AllOf((ok, ok)).evaluate(c).verdict is Verdict.PASS
    assert AnyOf((halt, ok)).evaluate(c).verdict is Verdict.PASS
    assert AnyOf((halt, halt)).evaluate(c).verdict is Verdict.HALT
    assert AnyOf((halt, wait)).evaluate(c).verdict is Verdict.WAIT


def test_gate_specs_round_trip_and_new_gate_types_plug_in() -> None:
    gate = AllOf((FailureRate(0.05, 20), MaxFailures(3), ManualApproval()))
    assert gate_from_spec(gate.spec()) == gate

    class P95Latency:
        def __init__(self, limit: float) -> None:
            self.limit = limit

        def evaluate(self, c: StageCounts) -> GateResult:
            p95 = c.signals.get("p95_ttft_ms")
            if p95 is None:
                return GateResult("p95", Verdict.WAIT, "no latency yet")
            verdict = Verdict.HALT if p95 > self.limit else Verdict.PASS
            return GateResult("p95", verdict, f"p95 {p95} ms vs {self.limit} ms")

        def spec(self) -> dict[str, Any]:
            return {"type": "test_p95", "limit": self.limit}

    register_gate_type("test_p95", lambda s: P95Latency(float(s["limit"])))
    plugged = gate_from_spec({"type": "all_of", "gates": [{"type": "test_p95", "limit": 400}]})
    plan = StagePlan.parse([10, 100])
    slow = counts(committed=30, signals={"p95_ttft_ms": 480})
    assert decide(plan, plugged, slow).step is Step.HALT
    fast = counts(committed=30, signals={"p95_ttft_ms": 300})
    assert decide(plan, plugged, fast).step is Step.ADVANCE
    with pytest.raises(InvalidRolloutError, match="unknown gate type"):
        gate_from_spec({"type": "nope"})


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "failure_rate", "max_rate": 1.5, "min_sample": 20},
        {"type": "failure_rate", "max_rate": -0.1, "min_sample": 20},
        {"type": "failure_rate", "max_rate": 0.05, "min_sample": 0},
        {"type": "failure_rate", "max_rate": "5%", "min_sample": 20},
        {"type": "max_failures", "limit": -1},
        {"type": "all_of", "gates": []},
    ],
)
def test_thresholds_out_of_range_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidRolloutError):
        gate_from_spec(spec)


# --- decisions and actions ---------------------------------------------------------------


def test_decisions() -> None:
    plan = StagePlan.parse([10, 100])
    gate = AllOf((FailureRate(0.05, 5), ManualApproval()))
    assert decide(plan, gate, counts(committed=3, pending=2)).step is Step.WAIT
    assert decide(plan, gate, counts(committed=5)).step is Step.AWAIT_APPROVAL
    advanced = decide(plan, gate, counts(committed=5, approved=True))
    assert advanced.step is Step.ADVANCE and advanced.next_stage == 1
    assert decide(plan, gate, counts(stage=1, is_last=True, committed=50)).step is Step.COMPLETE
    assert decide(plan, gate, counts(committed=5, failed=5)).step is Step.HALT


def test_operator_actions_follow_the_state_machine() -> None:
    assert after_action(RolloutState.RUNNING, Action.PAUSE, "ro") is RolloutState.PAUSED
    assert after_action(RolloutState.PAUSED, Action.RESUME, "ro") is RolloutState.RUNNING
    assert after_action(RolloutState.HALTED, Action.ABORT, "ro") is RolloutState.ABORTED
    with pytest.raises(ConflictError, match="completed"):
        after_action(RolloutState.COMPLETED, Action.PAUSE, "ro")
    with pytest.raises(ConflictError, match="resume applies only"):
        after_action(RolloutState.RUNNING, Action.RESUME, "ro")
