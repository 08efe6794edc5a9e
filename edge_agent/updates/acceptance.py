"""The acceptance checks' rules (pure: values in, values out, no I/O), shared by the
agent's health window and the ``device_tests`` suite.

**Thresholds** (:class:`Thresholds`) are the figures a device class must meet: p95 time to
first token, p50 decode tokens/s, p95 embedding, vision (per model) and RAG query latency,
peak resident memory, cold start. A release carries them per device class in its signed
config (``acceptance.device_classes.<class>``); a device profile carries them in a file.
The schema is strict: an unknown key (a typo would switch a check off) and a threshold
that is not a positive number are refused, naming the key.

**Measurement** follows MLPerf's single-stream scenario: a few untimed warm-up queries,
then queries one after another until both a minimum number of queries *and* a minimum
duration have been reached (or a cap on either, whichever comes first). The statistic (p50
or p95) is reported with a percentile-bootstrap confidence interval drawn from a seeded
generator, so two judgements of the same samples agree.

A figure passes only when the whole interval is on the right side of its threshold; it
fails when the whole interval is on the wrong side, and is *inconclusive* otherwise (more
queries, or a quieter device, would decide it). A figure measured once (peak memory, cold
start) has no interval and is judged on its value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

__all__ = [
    "FIGURES",
    "Bound",
    "Estimate",
    "FigureResult",
    "FigureSpec",
    "Measurement",
    "NotServed",
    "Observer",
    "QueryRules",
    "Status",
    "Thresholds",
    "collect",
    "describe_errors",
    "estimate",
    "figure_name",
    "judge",
    "measure",
    "percentile",
]

T = TypeVar("T")

Bound = Literal["max", "min"]  # the measured value must be <= (max) or >= (min) the threshold


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NOT_MEASURED = "not_measured"  # the device serves nothing this figure can measure


@dataclass(frozen=True)
class QueryRules:
    """How many queries a figure takes: ``warmup`` untimed, then at least ``min_queries``
    and at least ``min_duration_s`` of timed queries, never more than ``max_queries`` or
    ``max_duration_s`` (the bounded on-device run lowers these)."""

    warmup: int = 3
    min_queries: int = 30
    min_duration_s: float = 2.0
    max_queries: int = 1000
    max_duration_s: float = 60.0
    confidence: float = 0.95
    bootstrap_resamples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_queries < 1 or self.max_queries < self.min_queries:
            raise ValueError(
                f"query counts must satisfy warmup >= 0 and 1 <= min_queries <= max_queries"
                f" (got {self.warmup}, {self.min_queries}, {self.max_queries})"
            )
        if not 0 <= self.min_duration_s <= self.max_duration_s:
            raise ValueError("durations must satisfy 0 <= min_duration_s <= max_duration_s")
        if not 0.5 <= self.confidence < 1 or self.bootstrap_resamples < 100:
            raise ValueError("confidence must be in [0.5, 1) and bootstrap_resamples >= 100")


def collect(query: Callable[[int], T], rules: QueryRules, clock: Callable[[], float]) -> list[T]:
    """Run ``query(i)`` (which returns one observation) under ``rules``: warm-up first,
    untimed; then until both minimums are met or a cap is reached. ``clock`` is in
    seconds (``time.monotonic`` in the runner, a fake one in tests)."""
    for i in range(rules.warmup):
        query(i)
    samples: list[T] = []
    started = clock()
    while len(samples) < rules.max_queries:
        elapsed = clock() - started
        if len(samples) >= rules.min_queries and elapsed >= rules.min_duration_s:
            break
        if samples and elapsed >= rules.max_duration_s:
            break
        samples.append(query(rules.warmup + len(samples)))
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


@dataclass(frozen=True)
class Estimate:
    """A statistic of the samples with its bootstrap interval [low, high]."""

    value: float
    low: float
    high: float
    n: int


def estimate(samples: Sequence[float], q: float, rules: QueryRules) -> Estimate:
    """The ``q``-th percentile and its percentile-bootstrap interval (seeded)."""
    data = np.asarray(samples, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no samples")
    if not np.all(np.isfinite(data)):
        raise ValueError("samples hold NaN or infinite values")
    rng = np.random.default_rng(rules.seed)
    picks = rng.integers(0, data.size, size=(rules.bootstrap_resamples, data.size))
    stats = np.percentile(data[picks], q, axis=1)
    tail = (1 - rules.confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Estimate(float(np.percentile(data, q)), float(low), float(high), int(data.size))


@dataclass(frozen=True)
class FigureResult:
    """One figure against its threshold. ``estimate`` is None when nothing was measured
    or the figure is a single observation (then ``value`` holds it)."""

    figure: str
    unit: str
    bound: Bound
    threshold: float
    status: Status
    value: float | None = None
    estimate: Estimate | None = None
    note: str = ""
    samples: tuple[float, ...] = field(default=(), repr=False)

    def verdict_line(self) -> str:
        op = "<=" if self.bound == "max" else ">="
        if self.value is None:
            return f"{self.figure}: {self.status.value} ({self.note})"
        interval = ""
        if self.estimate is not None:
            interval = f" [{self.estimate.low:.4g}, {self.estimate.high:.4g}]"
        return (
            f"{self.figure} = {self.value:.4g}{interval} {self.unit}, required {op}"
            f" {self.threshold:g}: {self.status.value}"
        )

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "figure": self.figure,
            "unit": self.unit,
            "bound": self.bound,
            "threshold": self.threshold,
            "status": self.status.value,
            "value": _rounded(self.value),
        }
        if self.estimate is not None:
            body["interval"] = [_rounded(self.estimate.low), _rounded(self.estimate.high)]
            body["n"] = self.estimate.n
        if self.note:
            body["note"] = self.note
        return body


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _side(low: float, high: float, threshold: float, bound: Bound) -> Status:
    if bound == "max":
        passed, failed = high <= threshold, low > threshold
    else:
        passed, failed = low >= threshold, high < threshold
    if passed:
        return Status.PASS
    if failed:
        return Status.FAIL
    return Status.INCONCLUSIVE


def judge(
    figure: str,
    unit: str,
    bound: Bound,
    threshold: float,
    samples: Sequence[float],
    *,
    q: float | None,
    rules: QueryRules,
    note: str = "",
) -> FigureResult:
    """Judge ``samples`` of ``figure`` against ``threshold``. ``q`` is the percentile the
    threshold is on (50, 95); None for a single observation (the first sample)."""
    if not samples:
        return FigureResult(figure, unit, bound, threshold, Status.NOT_MEASURED, note=note)
    if q is None:
        value = float(samples[0])
        if not math.isfinite(value):
            raise ValueError(f"{figure}: the observation is not a finite number ({value})")
        status = _side(value, value, threshold, bound)
        return FigureResult(figure, unit, bound, threshold, status, value, None, note, (value,))
    est = estimate(samples, q, rules)
    status = _side(est.low, est.high, threshold, bound)
    return FigureResult(
        figure, unit, bound, threshold, status, est.value, est, note, tuple(samples)
    )


# --- the schema of thresholds and measurement settings ---------------------------------

_Positive = Field(default=None, gt=0, allow_inf_nan=False)
_PositiveMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


QueryKind = Literal["chat", "embedding", "vision", "rag", "memory", "cold_start"]
SINGLE_SHOT_KINDS: frozenset[str] = frozenset({"memory", "cold_start"})


@dataclass(frozen=True)
class FigureSpec:
    """What a threshold key means: the unit, which side is good, the percentile (None for
    a single observation), and which field of which kind of query measures it."""

    key: str
    unit: str
    bound: Bound
    q: float | None
    kind: QueryKind
    field: str
    what: str
    per_model: bool = False


FIGURES: Mapping[str, FigureSpec] = {
    f.key: f
    for f in (
        FigureSpec(
            "ttft_p95_ms", "ms", "max", 95, "chat", "ttft_ms", "time to first token, streamed"
        ),
        FigureSpec(
            "decode_tokens_per_s_p50",
            "tokens/s",
            "min",
            50,
            "chat",
            "decode_tokens_per_s",
            "tokens per second after the first, streamed",
        ),
        FigureSpec("embedding_p95_ms", "ms", "max", 95, "embedding", "ms", "one sentence"),
        FigureSpec("vision_p95_ms", "ms", "max", 95, "vision", "ms", "one image, end to end", True),
        FigureSpec(
            "vision_inference_p50_ms",
            "ms",
            "max",
            50,
            "vision",
            "inference_ms",
            "the model's own run on one image (what quantization changes)",
            True,
        ),
        FigureSpec("rag_query_p95_ms", "ms", "max", 95, "rag", "ms", "one retrieval"),
        FigureSpec(
            "peak_rss_mb", "MB", "max", None, "memory", "peak_rss_mb", "the agent's peak RSS"
        ),
        FigureSpec(
            "cold_start_ms", "ms", "max", None, "cold_start", "ms", "model load to first token"
        ),
    )
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_PerModel = dict[_ModelName, _PositiveMs]


class Thresholds(_Strict):
    """The figures a device class must meet (all optional, all > 0)."""

    ttft_p95_ms: float | None = _Positive
    decode_tokens_per_s_p50: float | None = _Positive
    embedding_p95_ms: float | None = _Positive
    vision_p95_ms: _PerModel = Field(default_factory=dict, max_length=32)
    vision_inference_p50_ms: _PerModel = Field(default_factory=dict, max_length=32)
    rag_query_p95_ms: float | None = _Positive
    peak_rss_mb: float | None = _Positive
    cold_start_ms: float | None = _Positive

    def items(self) -> Iterator[tuple[str, str | None, float]]:
        """``(figure key, model or None, threshold)`` for every threshold set."""
        for key, spec in FIGURES.items():
            value = getattr(self, key)
            if spec.per_model:
                for model, limit in sorted(value.items()):
                    yield key, model, float(limit)
            elif value is not None:
                yield key, None, float(value)


class Measurement(_Strict):
    """Query counts and the statistics' settings (see :class:`~device_tests.measure.QueryRules`)."""

    warmup: int = Field(default=3, ge=0, le=1000)
    min_queries: int = Field(default=30, ge=1, le=100_000)
    min_duration_s: float = Field(default=2.0, ge=0, le=3600)
    max_queries: int = Field(default=1000, ge=1, le=100_000)
    max_duration_s: float = Field(default=60.0, gt=0, le=3600)
    confidence: float = Field(default=0.95, ge=0.5, lt=1)
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    seed: int = Field(default=20261201, ge=0, le=2**32 - 1)

    @model_validator(mode="after")
    def _caps_above_minimums(self) -> Measurement:
        if self.max_queries < self.min_queries:
            raise ValueError(f"max_queries {self.max_queries} < min_queries {self.min_queries}")
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(
                f"max_duration_s {self.max_duration_s} < min_duration_s {self.min_duration_s}"
            )
        return self

    def rules(self) -> QueryRules:
        return QueryRules(**self.model_dump())


def describe_errors(error: ValidationError, where: str) -> str:
    """One line per problem, named by its dotted key: what a user fixes in the file."""
    lines = []
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key (a typo would switch a check off)")
        elif err["type"] == "missing":
            lines.append(f"{key}: missing")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"{key}: {err['msg']}{shown}")
    return f"{where} is invalid: " + "; ".join(lines)


# --- measuring a set of thresholds ----------------------------------------------------


class NotServed(Exception):
    """The target serves nothing this figure can measure (no such model, no index)."""


class Observer(Protocol):
    """Sends one query of ``kind`` (to ``model``, or the target's only/first one when None)
    and returns what it measured, by field (``ms``, ``ttft_ms``, ``inference_ms``...). A
    field it could not measure this time (a one-token reply has no decode rate) is left
    out. Raises :class:`NotServed` when there is nothing of that kind to query."""

    def observe(self, kind: str, model: str | None, i: int) -> Mapping[str, float]: ...


def figure_name(key: str, model: str | None) -> str:
    return key if model is None else f"{key}[{model}]"


def measure(
    thresholds: Thresholds,
    rules: QueryRules,
    observer: Observer,
    clock: Callable[[], float],
) -> tuple[FigureResult, ...]:
    """Measure and judge every figure ``thresholds`` sets. Figures fed by the same kind of
    query (time to first token and decode rate; end-to-end and inference time of one
    vision model) share its queries; memory and cold start are read once, at the end."""
    wanted = list(thresholds.items())
    groups: dict[tuple[str, str | None], list[Mapping[str, float]]] = {}
    notes: dict[tuple[str, str | None], str] = {}
    order = sorted(
        {(FIGURES[k].kind, m) for k, m, _ in wanted},
        key=lambda g: (g[0] in SINGLE_SHOT_KINDS, g[0], g[1] or ""),
    )
    for kind, model in order:
        seen: list[Mapping[str, float]] = []

        def one(i: int, kind: str = kind, model: str | None = model) -> Mapping[str, float]:
            return observer.observe(kind, model, i)

        try:
            seen = [one(0)] if kind in SINGLE_SHOT_KINDS else collect(one, rules, clock)
        except NotServed as e:
            seen, notes[(kind, model)] = [], str(e)
        groups[(kind, model)] = seen
    results = []
    for key, model, limit in wanted:
        spec = FIGURES[key]
        observed = groups[(spec.kind, model)]
        samples = [o[spec.field] for o in observed if spec.field in o]
        note = notes.get((spec.kind, model), "")
        if not samples and not note:
            note = f"the target does not measure {spec.what}"
        results.append(
            judge(
                figure_name(key, model),
                spec.unit,
                spec.bound,
                limit,
                samples,
                q=spec.q,
                rules=rules,
                note=note,
            )
        )
    return tuple(results)
