"""Accuracy-aware INT8: which quantization recipe to ship, found by measuring.

The pure core of ``python -m converters quantize --target ...``. It knows nothing about
ONNX or onnxruntime: the caller passes the model's blocks (names, in graph order), a
``measure`` function that builds and measures one :class:`Recipe`, a ``clock`` and a
``report`` callback for progress. Given the same measurements and seed it tries the same
recipes in the same order and picks the same one.

The search, in stages (each trial is one quantized model, measured on the evaluation set):

1. ``calibration``: every calibration method x weight bits, all blocks quantized.
2. ``granularity``: the best of those with per-tensor instead of per-channel weights.
3. ``sensitivity``: when no full-INT8 recipe meets the gate, each block quantized alone
   (the rest float): the agreement it costs, and the output fidelity it costs to break ties.
4. ``mixed``: the most sensitive blocks kept float, k = 1, 2, 4, ... until the gate is met,
   then bisected down to the fewest float blocks that still meet it.

The pick is the fastest measured recipe that meets the gate (latency as a ratio to FP32,
timed interleaved in the same trial; ratios within ``tie_margin`` count as equal and the
higher agreement wins). When even that recipe is not faster than FP32, the verdict is to
keep FP32 on this target. A time budget stops the search between trials.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

CALIBRATIONS = ("minmax", "entropy", "percentile")
WEIGHT_BITS = (8, 7)
RECIPE_STAGES = ("calibration", "granularity", "mixed")  # sensitivity probes are not recipes
RUNOFF_FINALISTS = 4
Retime = Callable[[Sequence["Recipe"]], dict["Recipe", "Measurement"]]


@dataclass(frozen=True)
class Recipe:
    """One way to quantize a model; ``only_block`` marks a sensitivity probe."""

    calibration: str = "minmax"
    per_channel: bool = True
    weight_bits: int = 8  # 8, or 7 (onnxruntime's reduce_range)
    float_blocks: tuple[str, ...] = ()
    only_block: str | None = None

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"unknown calibration {self.calibration!r}; known: {CALIBRATIONS}")
        if self.weight_bits not in WEIGHT_BITS:
            raise ValueError(f"weight_bits must be one of {WEIGHT_BITS}, not {self.weight_bits}")

    def describe(self) -> str:
        parts = [
            self.calibration,
            "per-channel" if self.per_channel else "per-tensor",
            f"{self.weight_bits}-bit weights",
        ]
        if self.only_block is not None:
            parts.append(f"only {self.only_block} quantized")
        elif self.float_blocks:
            parts.append(f"{len(self.float_blocks)} block(s) float")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration,
            "per_channel": self.per_channel,
            "weight_bits": self.weight_bits,
            "float_blocks": list(self.float_blocks),
            "only_block": self.only_block,
        }


@dataclass(frozen=True)
class Measurement:
    """What one trial measured: top-1 agreement, output fidelity and latency vs FP32."""

    agree: int
    total: int
    fidelity: float  # mean cosine of the two models' class scores, a continuous tie-break
    p50_ms: float
    p95_ms: float
    fp32_p50_ms: float
    fp32_p95_ms: float
    labelled: dict[str, Any] = field(default_factory=dict)  # true top-1 when labels exist
    timed: bool = True  # sensitivity probes are not timed (their latency decides nothing)

    def __post_init__(self) -> None:
        if self.total <= 0 or not 0 <= self.agree <= self.total:
            raise ValueError(f"agreement {self.agree}/{self.total} is not a valid count")

    @property
    def agreement(self) -> float:
        return self.agree / self.total

    @property
    def latency_ratio(self) -> float:
        """Candidate p50 over FP32 p50, both timed in the same trial (below 1 is faster)."""
        if not self.timed or self.fp32_p50_ms <= 0:
            return 1.0
        return self.p50_ms / self.fp32_p50_ms

    def as_dict(self) -> dict[str, Any]:
        low, high = wilson_interval(self.agree, self.total)
        timed = self.timed

        def ms(value: float) -> float | None:
            return round(value, 4) if timed else None

        return {
            "agreement": round(self.agreement, 4),
            "agreement_ci95": [round(low, 4), round(high, 4)],
            "agree": self.agree,
            "images": self.total,
            "fidelity": round(self.fidelity, 5),
            "p50_ms": ms(self.p50_ms),
            "p95_ms": ms(self.p95_ms),
            "fp32_p50_ms": ms(self.fp32_p50_ms),
            "fp32_p95_ms": ms(self.fp32_p95_ms),
            "latency_ratio": ms(self.latency_ratio),
            **({"labelled": self.labelled} if self.labelled else {}),
        }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% for the default z)."""
    if n <= 0:
        raise ValueError("an interval needs at least one observation")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Trial:
    """One measured recipe."""

    index: int
    stage: str
    recipe: Recipe
    measurement: Measurement
    seconds: float

    def meets(self, gate: float) -> bool:
        return self.measurement.agreement >= gate

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage,
            "recipe": self.recipe.as_dict(),
            "described": self.recipe.describe(),
            **self.measurement.as_dict(),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class SearchResult:
    """Every trial, the block sensitivities, the pick and why the search stopped."""

    min_agreement: float
    trials: tuple[Trial, ...]
    sensitivity: tuple[tuple[str, float, float], ...]  # (block, agreement cost, fidelity cost)
    chosen: Trial | None  # the fastest recipe meeting the gate
    best: Trial | None  # the highest agreement among the recipes (reported when none meets)
    stopped: str  # "done", "budget"
    seed: int

    @property
    def met_gate(self) -> bool:
        return self.chosen is not None

    @property
    def keep_fp32(self) -> bool:
        """The gate was met, but not by anything faster than FP32 on this target."""
        return self.chosen is not None and self.chosen.measurement.latency_ratio >= 1.0

    @property
    def verdict(self) -> str:
        if self.chosen is None:
            return "gate-not-met"
        return "keep-fp32" if self.keep_fp32 else "int8"

    def curve(self) -> list[dict[str, Any]]:
        """The recipes (no probes) as agreement/latency points, fastest first."""
        points = [t for t in self.trials if t.stage in RECIPE_STAGES]
        return [
            {
                "index": t.index,
                "described": t.recipe.describe(),
                "agreement": round(t.measurement.agreement, 4),
                "latency_ratio": round(t.measurement.latency_ratio, 4),
                "meets_gate": t.meets(self.min_agreement),
            }
            for t in sorted(points, key=lambda t: (t.measurement.latency_ratio, t.index))
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "min_agreement": self.min_agreement,
            "seed": self.seed,
            "verdict": self.verdict,
            "stopped": self.stopped,
            "chosen": self.chosen.as_dict() if self.chosen else None,
            "best": self.best.as_dict() if self.best else None,
            "sensitivity": [
                {"block": b, "agreement_cost": round(a, 4), "fidelity_cost": round(f, 6)}
                for b, a, f in self.sensitivity
            ],
            "curve": self.curve(),
            "trials": [t.as_dict() for t in self.trials],
        }


class _BudgetSpent(Exception):
    pass


class _Runner:
    """Runs trials in order, stopping before one that the time budget cannot cover."""

    def __init__(
        self,
        measure: Callable[[Recipe], Measurement],
        budget_s: float | None,
        clock: Callable[[], float],
        report: Callable[[str], None],
        gate: float,
    ) -> None:
        self.measure, self.budget_s, self.clock, self.report = measure, budget_s, clock, report
        self.gate = gate
        self.start = clock()
        self.trials: list[Trial] = []
        self.seen: dict[Recipe, Trial] = {}

    def run(self, stage: str, recipe: Recipe) -> Trial:
        if recipe in self.seen:
            return self.seen[recipe]
        elapsed = self.clock() - self.start
        if self.budget_s is not None and self.trials:
            durations = sorted(t.seconds for t in self.trials)
            expected = durations[len(durations) // 2]
            if elapsed + expected > self.budget_s:
                self.report(
                    f"time budget {self.budget_s:.0f} s: {elapsed:.0f} s spent, a trial takes "
                    f"~{expected:.0f} s; stopping after {len(self.trials)} trials"
                )
                raise _BudgetSpent
        t0 = self.clock()
        measured = self.measure(recipe)
        trial = Trial(len(self.trials), stage, recipe, measured, self.clock() - t0)
        self.trials.append(trial)
        self.seen[recipe] = trial
        m = measured
        latency = (
            f"latency {m.latency_ratio:.2f}x FP32 ({m.p50_ms:.2f} vs {m.fp32_p50_ms:.2f} ms p50)"
            if m.timed
            else "not timed"
        )
        self.report(
            f"[{trial.index + 1}] {stage}: {recipe.describe()}: agreement {m.agreement:.3f} "
            f"({m.agree}/{m.total}){' MEETS' if trial.meets(self.gate) else ''}, {latency}, "
            f"{trial.seconds:.1f} s, {self.clock() - self.start:.0f} s total"
        )
        return trial


def _quality(t: Trial) -> tuple[float, float, int]:
    """Agreement, then fidelity, then the earlier trial: never latency, so that the path of
    the search does not depend on timing noise (only the final pick among passing recipes
    reads latency)."""
    return (t.measurement.agreement, round(t.measurement.fidelity, 6), -t.index)


def pick_fastest(trials: Sequence[Trial], gate: float, tie_margin: float) -> Trial | None:
    """The fastest recipe meeting ``gate``; ratios within ``tie_margin`` of the fastest tie,
    and among those the higher agreement, then fewer float blocks, then the earlier wins."""
    runoff = [t for t in trials if t.stage == "runoff" and t.meets(gate)]
    passing = runoff or [t for t in trials if t.stage in RECIPE_STAGES and t.meets(gate)]
    if not passing:
        return None
    fastest = min(t.measurement.latency_ratio for t in passing)
    tied = [t for t in passing if t.measurement.latency_ratio <= fastest * (1 + tie_margin)]
    return max(
        tied,
        key=lambda t: (t.measurement.agreement, -len(t.recipe.float_blocks), -t.index),
    )


def rank_blocks(
    probes: Sequence[tuple[str, Measurement]], seed: int
) -> list[tuple[str, float, float]]:
    """Blocks by the cost of quantizing each alone, most sensitive first (ties by seed)."""
    order = list(probes)
    random.Random(seed).shuffle(order)
    costs = [(block, 1.0 - m.agreement, 1.0 - m.fidelity) for block, m in order]
    return sorted(costs, key=lambda c: (-c[1], -c[2]))


def search(
    blocks: Sequence[str],
    measure: Callable[[Recipe], Measurement],
    *,
    min_agreement: float,
    clock: Callable[[], float],
    seed: int = 0,
    time_budget_s: float | None = None,
    report: Callable[[str], None] = lambda _: None,
    calibrations: Sequence[str] = CALIBRATIONS,
    weight_bits: Sequence[int] = WEIGHT_BITS,
    tie_margin: float = 0.03,
    retime: Retime | None = None,
) -> SearchResult:
    """Search recipes for the fastest one whose agreement reaches ``min_agreement``.

    ``retime``, when given, re-times the passing finalists (at most four, fewest float
    blocks first) together, interleaved in one loop: the pick is then made on those
    ``runoff`` timings, not on timings taken minutes apart under different load."""
    if not blocks:
        raise ValueError("the model has no quantizable blocks (no Conv, Gemm or MatMul)")
    if len(set(blocks)) != len(blocks):
        raise ValueError("block names must be unique")
    if not 0.0 <= min_agreement <= 1.0:
        raise ValueError(f"min_agreement must be within 0..1, not {min_agreement}")
    runner = _Runner(measure, time_budget_s, clock, report, min_agreement)
    sensitivity: list[tuple[str, float, float]] = []
    stopped = "done"
    try:
        base_trials = [
            runner.run("calibration", Recipe(calibration=c, per_channel=True, weight_bits=b))
            for c in calibrations
            for b in weight_bits
        ]
        base = max(base_trials, key=_quality)
        tensor = runner.run("granularity", replace(base.recipe, per_channel=False))
        if tensor.measurement.agreement > base.measurement.agreement:
            base = tensor
        if not any(t.meets(min_agreement) for t in runner.trials):
            report(f"no full-INT8 recipe meets {min_agreement}; measuring block sensitivity")
            probes = [
                (b, runner.run("sensitivity", replace(base.recipe, only_block=b)).measurement)
                for b in blocks
            ]
            sensitivity = rank_blocks(probes, seed)
            ranked = [b for b, _, _ in sensitivity]
            _mixed(runner, base.recipe, ranked, blocks, min_agreement)
    except _BudgetSpent:
        stopped = "budget"
    passing = [t for t in runner.trials if t.stage in RECIPE_STAGES and t.meets(min_agreement)]
    if retime is not None and len(passing) > 1:
        finalists = sorted(
            passing, key=lambda t: (len(t.recipe.float_blocks), -t.measurement.agree, t.index)
        )
        finalists = finalists[:RUNOFF_FINALISTS]
        t0 = clock()
        timed = retime([t.recipe for t in finalists])
        seconds = (clock() - t0) / len(finalists)
        for t in finalists:
            m = replace(timed[t.recipe], agree=t.measurement.agree, total=t.measurement.total)
            m = replace(m, fidelity=t.measurement.fidelity, labelled=t.measurement.labelled)
            runoff = Trial(len(runner.trials), "runoff", t.recipe, m, seconds)
            runner.trials.append(runoff)
            report(
                f"[{runoff.index + 1}] runoff: {t.recipe.describe()}: "
                f"{m.latency_ratio:.2f}x FP32 ({m.p50_ms:.2f} vs {m.fp32_p50_ms:.2f} ms p50)"
            )
    recipes = [t for t in runner.trials if t.stage in RECIPE_STAGES]
    return SearchResult(
        min_agreement=min_agreement,
        trials=tuple(runner.trials),
        sensitivity=tuple(sensitivity),
        chosen=pick_fastest(runner.trials, min_agreement, tie_margin),
        best=max(recipes, key=_quality) if recipes else None,
        stopped=stopped,
        seed=seed,
    )


def _mixed(
    runner: _Runner, base: Recipe, ranked: list[str], blocks: Sequence[str], gate: float
) -> None:
    """Keep the k most sensitive blocks float: k doubles until the gate is met, then bisects."""

    def with_float(k: int) -> Trial:
        chosen = set(ranked[:k])
        kept = tuple(b for b in blocks if b in chosen)  # graph order, stable across runs
        return runner.run("mixed", replace(base, float_blocks=kept))

    most = len(blocks) - 1  # all blocks float is FP32 itself
    if most < 1:
        return
    low, high, k = 0, None, 1
    while k <= most:
        if with_float(k).meets(gate):
            high = k
            break
        low = k
        if k == most:
            break
        k = min(k * 2, most)
    if high is None:
        runner.report(f"even {most} of {len(blocks)} blocks in float does not meet {gate}")
        return
    while high - low > 1:
        mid = (low + high) // 2
        if with_float(mid).meets(gate):
            high = mid
        else:
            low = mid
