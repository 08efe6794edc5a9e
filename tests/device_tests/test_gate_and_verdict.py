"""Pure parts of the release gate: the ``acceptance_pass_rate`` rollout gate, and the
health window's verdict on an acceptance check (numbers in the reason, inconclusive is
not a pass, the release's thresholds block validated strictly)."""

from __future__ import annotations

import pytest

from control_plane.rollouts.core import InvalidRolloutError, StageCounts, Verdict, gate_from_spec
from edge_agent.errors import ConfigError
from edge_agent.updates.acceptance import QueryRules, Status, judge
from edge_agent.updates.health import Acceptance, HealthVerdict, judge_acceptance


def counts(reported: int, passed: int) -> StageCounts:
    return StageCounts(
        stage=0,
        percent=10,
        is_last=False,
        committed=passed,
        failed=reported - passed,
        timed_out=0,
        pending=0,
        signals={"acceptance": {"reported": reported, "passed": passed}},
    )


def test_the_pass_rate_gate_waits_halts_and_passes() -> None:
    gate = gate_from_spec({"type": "acceptance_pass_rate", "min_rate": 0.95, "min_sample": 2})
    assert gate.evaluate(counts(1, 1)).verdict is Verdict.WAIT
    halted = gate.evaluate(counts(20, 18))
    assert halted.verdict is Verdict.HALT and "18 of 20 devices passed" in halted.reason
    assert gate.evaluate(counts(20, 19)).verdict is Verdict.PASS
    assert gate_from_spec(gate.spec()) == gate


def test_the_pass_rate_gate_refuses_a_rate_out_of_range() -> None:
    with pytest.raises(InvalidRolloutError, match="min_rate"):
        gate_from_spec({"type": "acceptance_pass_rate", "min_rate": 95})


SMOKE = HealthVerdict(True, "health window passed: vision 'm' 3 ms")


def test_a_failed_figure_rolls_back_with_its_numbers() -> None:
    suite = Acceptance.from_release_config(
        {"acceptance": {"device_classes": {"x86-ci": {"thresholds": {"vision_p95_ms": {"m": 5}}}}}}
    ).for_class("x86-ci")
    assert suite is not None
    slow = judge(
        "vision_p95_ms[m]",
        "ms",
        "max",
        5,
        [9.0 + i % 3 for i in range(40)],
        q=95,
        rules=QueryRules(),
    )
    verdict = judge_acceptance("x86-ci", suite, [slow], SMOKE, duration_s=1.5, loadavg_1m=0.5)
    assert not verdict.passed
    assert verdict.reason.startswith("acceptance check failed for device class x86-ci:")
    assert "vision_p95_ms[m] = 11" in verdict.reason and "required <= 5: fail" in verdict.reason
    assert verdict.acceptance is not None and verdict.acceptance.passed is False
    assert verdict.acceptance.figures[0].status == "fail"


def test_inconclusive_rolls_back_unless_the_release_accepts_it() -> None:
    spread = [float(x) for x in range(1, 41)]
    straddling = judge("vision_p95_ms[m]", "ms", "max", 38.0, spread, q=95, rules=QueryRules())
    assert straddling.status is Status.INCONCLUSIVE
    block = {"thresholds": {"vision_p95_ms": {"m": 38}}}
    strict = Acceptance.from_release_config({"acceptance": {"device_classes": {"c": block}}})
    lenient = Acceptance.from_release_config(
        {"acceptance": {"device_classes": {"c": {**block, "on_inconclusive": "commit"}}}}
    )
    strict_suite, lenient_suite = strict.for_class("c"), lenient.for_class("c")
    assert strict_suite is not None and lenient_suite is not None
    assert not judge_acceptance("c", strict_suite, [straddling], SMOKE, duration_s=1).passed
    kept = judge_acceptance("c", lenient_suite, [straddling], SMOKE, duration_s=1)
    assert kept.passed and kept.acceptance is not None and kept.acceptance.passed is False
    assert strict.for_class("other") is None and strict.for_class(None) is None


@pytest.mark.parametrize(
    ("block", "said"),
    [
        ({"c": {"thresholds": {"vision_p95_ms": {"m": -1}}}}, "greater than 0"),
        ({"c": {"thresholds": {"ttft_p59_ms": 1}}}, "ttft_p59_ms: Extra inputs"),
        ({"c": {"threshold": {}}}, "threshold: Extra inputs"),
        ({"Bad Class": {"thresholds": {}}}, "device_classes.Bad Class"),
    ],
)
def test_a_bad_thresholds_block_is_refused_naming_the_key(block: object, said: str) -> None:
    with pytest.raises(ConfigError, match=r"acceptance\.device_classes") as e:
        Acceptance.from_release_config({"acceptance": {"device_classes": block}})
    assert said in str(e.value)
