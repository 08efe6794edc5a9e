"""The INT8 recipe search as a pure function: a model of a network whose blocks cost known
agreement, measured by a function the test controls (values in, values out)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from converters.int8_search import (
    Measurement,
    Recipe,
    SearchResult,
    pick_fastest,
    search,
    wilson_interval,
)

BLOCKS = ("stem", "b1", "b2", "b3", "b4", "b5", "head", "fc")
# Agreement each block costs when quantized; stem and fc are the sensitive ones, b3 a bit.
COSTS = {"stem": 0.06, "b1": 0.01, "b2": 0.0, "b3": 0.03, "b4": 0.0, "b5": 0.01, "head": 0.0}
COSTS["fc"] = 0.08
CALIBRATION_FACTOR = {"minmax": 1.0, "entropy": 1.2, "percentile": 0.9}
IMAGES = 200


@dataclass
class FakeNetwork:
    """Agreement falls with the cost of every quantized block; latency rises with each float
    block (a float block is as slow as FP32). Each measurement takes ``seconds`` of clock."""

    seconds: float = 10.0
    int8_speed: float = 0.45  # a fully quantized model's latency as a share of FP32's
    floor: float = 0.0  # agreement any quantized block costs (the input's quantization)
    now: float = 0.0
    measured: list[Recipe] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def measure(self, recipe: Recipe) -> Measurement:
        self.measured.append(recipe)
        self.now += self.seconds
        if recipe.only_block is not None:
            quantized = [recipe.only_block]
        else:
            quantized = [b for b in BLOCKS if b not in recipe.float_blocks]
        factor = CALIBRATION_FACTOR[recipe.calibration]
        factor *= 0.8 if recipe.weight_bits == 7 else 1.0
        factor *= 1.0 if recipe.per_channel else 1.5
        lost = min(1.0, self.floor + factor * sum(COSTS[b] for b in quantized))
        share_float = 1 - len(quantized) / len(BLOCKS)
        ratio = self.int8_speed + (1 - self.int8_speed) * share_float
        ratio *= 1.0 if recipe.per_channel else 0.97
        return Measurement(
            agree=round(IMAGES * (1 - lost)),
            total=IMAGES,
            fidelity=1 - lost / 2,
            p50_ms=10.0 * ratio,
            p95_ms=12.0 * ratio,
            fp32_p50_ms=10.0,
            fp32_p95_ms=12.0,
        )


def run(net: FakeNetwork, gate: float, **kw: object) -> SearchResult:
    return search(BLOCKS, net.measure, min_agreement=gate, clock=net.clock, **kw)  # type: ignore[arg-type]


def test_a_reachable_gate_is_met_by_the_fastest_passing_recipe() -> None:
    net = FakeNetwork()
    result = run(net, 0.93, seed=1)
    assert result.verdict == "int8" and result.chosen is not None
    chosen = result.chosen
    assert chosen.measurement.agreement >= 0.93
    # Full INT8 loses 0.8 x 0.9 x 0.19 = 13.7% at best, so sensitive blocks must stay float:
    # the two costliest (fc, stem) are enough, and fewer float blocks would not be.
    assert set(chosen.recipe.float_blocks) == {"stem", "fc"}
    assert chosen.recipe.calibration == "percentile" and chosen.recipe.weight_bits == 7
    passing = [t for t in result.trials if t.stage != "sensitivity" and t.meets(0.93)]
    assert all(
        chosen.measurement.latency_ratio <= t.measurement.latency_ratio * 1.03 for t in passing
    )
    ranked = [b for b, _, _ in result.sensitivity]
    assert ranked[:3] == ["fc", "stem", "b3"]


def test_the_same_seed_gives_the_same_search() -> None:
    first, second = FakeNetwork(), FakeNetwork()
    a, b = run(first, 0.93, seed=7), run(second, 0.93, seed=7)
    assert first.measured == second.measured
    assert a.as_dict() == b.as_dict()


def test_the_seed_orders_blocks_that_cost_the_same() -> None:
    orders = set()
    for seed in range(6):
        result = run(FakeNetwork(), 0.93, seed=seed)
        ties = [b for b, cost, _ in result.sensitivity if cost == 0.0]
        orders.add(tuple(ties))
    assert len(orders) > 1  # b2, b4 and head cost nothing: their order follows the seed


def test_a_gate_full_int8_meets_needs_no_sensitivity_probes() -> None:
    net = FakeNetwork()
    result = run(net, 0.85)
    assert result.chosen is not None and result.chosen.recipe.float_blocks == ()
    assert {t.stage for t in result.trials} == {"calibration", "granularity"}
    assert len(net.measured) == 3 * 2 + 1


def test_an_unreachable_gate_reports_the_best_recipe_and_no_choice() -> None:
    net = FakeNetwork(floor=0.02)
    result = run(net, 0.99)
    assert result.verdict == "gate-not-met" and result.chosen is None and not result.met_gate
    assert result.best is not None
    recipes = [t for t in result.trials if t.stage != "sensitivity"]
    assert result.best.measurement.agreement == max(t.measurement.agreement for t in recipes)
    assert result.as_dict()["chosen"] is None and result.as_dict()["best"] is not None


def test_the_time_budget_stops_between_trials() -> None:
    net = FakeNetwork(seconds=10.0, floor=0.02)
    messages: list[str] = []
    result = run(net, 0.99, time_budget_s=45.0, report=messages.append)
    assert result.stopped == "budget"
    assert len(result.trials) == 4  # the fifth would end at 50 s
    assert net.now <= 45.0
    assert any("time budget" in m for m in messages)
    assert sum(m.startswith("[") for m in messages) == 4  # progress: one line per trial


def test_int8_slower_than_fp32_keeps_fp32() -> None:
    net = FakeNetwork(int8_speed=1.3)
    result = run(net, 0.85)
    assert result.chosen is not None and result.keep_fp32
    assert result.verdict == "keep-fp32"


def test_latency_ties_go_to_the_higher_agreement() -> None:
    def trial_like(index: int, agree: int, p50: float) -> object:
        from converters.int8_search import Trial

        m = Measurement(agree, 100, 0.99, p50, p50, 10.0, 10.0)
        return Trial(index, "calibration", Recipe(), m, 1.0)

    trials = [trial_like(0, 90, 5.0), trial_like(1, 95, 5.1), trial_like(2, 99, 8.0)]
    chosen = pick_fastest(trials, 0.9, tie_margin=0.03)  # type: ignore[arg-type]
    assert chosen is not None and chosen.index == 1
    assert pick_fastest(trials, 0.9, tie_margin=0.0).index == 0  # type: ignore[arg-type, union-attr]
    assert pick_fastest(trials, 0.995, tie_margin=0.03) is None  # type: ignore[arg-type]


def test_wilson_interval_brackets_the_proportion() -> None:
    low, high = wilson_interval(88, 100)
    assert 0.80 < low < 0.88 < high < 0.94
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_bad_arguments_are_refused_before_any_measurement() -> None:
    net = FakeNetwork()
    with pytest.raises(ValueError, match="no quantizable blocks"):
        search([], net.measure, min_agreement=0.9, clock=net.clock)
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        search(BLOCKS, net.measure, min_agreement=1.5, clock=net.clock)
    with pytest.raises(ValueError, match="unknown calibration"):
        Recipe(calibration="kl")
    assert net.measured == []


def test_a_runoff_re_times_the_finalists_and_decides_the_pick() -> None:
    net = FakeNetwork()
    retimed: list[list[Recipe]] = []
    speed = {"minmax": 3.0, "entropy": 5.0, "percentile": 5.0}

    def retime(recipes: list[Recipe]) -> dict[Recipe, Measurement]:
        # Timed together, MinMax turns out fastest; the search's own trials had tied them.
        retimed.append(list(recipes))
        return {r: Measurement(1, 1, 1.0, speed[r.calibration], 6.0, 10.0, 12.0) for r in recipes}

    result = run(net, 0.80, retime=retime)  # type: ignore[arg-type]
    runoff = [t for t in result.trials if t.stage == "runoff"]
    passing = [t for t in result.trials if t.stage != "runoff" and t.meets(0.80)]
    assert len(passing) == 5 and len(retimed) == 1 and len(runoff) == 4  # at most 4 finalists
    assert result.chosen is not None and result.chosen.stage == "runoff"
    assert result.chosen.recipe.calibration == "minmax"  # without the runoff: percentile
    assert run(FakeNetwork(), 0.80).chosen.recipe.calibration == "percentile"  # type: ignore[union-attr]
    # the agreement is the one measured on the evaluation set, not the timing call's
    assert result.chosen.measurement.total == IMAGES
