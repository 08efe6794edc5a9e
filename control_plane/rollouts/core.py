"""Staged rollouts, the pure core: cohort selectors, stage plans, bucketing, gates and the
decisions between stages. Values in, values out; time is passed in; no I/O.

A rollout moves one release to a cohort in stages (e.g. 1% -> 10% -> 50% -> 100%). A
device's bucket is a hash of the rollout's salt and the device id, so stages are nested
(a device in the 10% stage is in every later one) and a restart never reshuffles them.
Between stages, gates judge what the moved devices reported: only a device that
*committed* (installed, booted, passed its health window) counts as a success; one that
rolled back, failed or did not report within the stage timeout counts as a failure.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from control_plane.errors import ConflictError, InvalidRequestError

BUCKETS = 10_000  # a bucket is 0.01% of the cohort
MAX_STAGES = 10


class InvalidRolloutError(InvalidRequestError):
    """A rollout request names an impossible cohort, plan or threshold."""

    error_type = "invalid_rollout"

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


# --- cohorts ---------------------------------------------------------------------------

# Hardware facts a selector can name (from enrollment); every other key is a tag key.
HARDWARE_KEYS = frozenset({"arch", "os", "cpu_count", "ram_mb", "accelerator"})
_NUMERIC_KEYS = frozenset({"cpu_count", "ram_mb"})
_TERM = re.compile(r"^\s*([A-Za-z0-9_.-]{1,64})\s*(!=|>=|<=|=)\s*([A-Za-z0-9_.:-]{1,128})\s*$")
MAX_SELECTOR_LENGTH = 500


@dataclass(frozen=True)
class Term:
    key: str
    op: str
    value: str

    def holds(self, tags: Mapping[str, str], hardware: Mapping[str, Any]) -> bool:
        if self.key == "accelerator":
            present = self.value in [str(a) for a in hardware.get("accelerators", [])]
            return present if self.op == "=" else not present
        actual = hardware.get(self.key) if self.key in HARDWARE_KEYS else tags.get(self.key)
        if self.op in (">=", "<="):
            if not isinstance(actual, int | float) or isinstance(actual, bool):
                return False
            limit = float(self.value)
            return actual >= limit if self.op == ">=" else actual <= limit
        if self.op == "=":
            return actual is not None and str(actual) == self.value
        return actual is None or str(actual) != self.value


@dataclass(frozen=True)
class CohortSelector:
    """Comma-separated terms, all of which must hold: ``hw=rpi5,store!=porto,ram_mb>=4096``.

    ``key=value`` and ``key!=value`` compare a device tag (``key=value`` tags) or a
    hardware fact (arch, os, cpu_count, ram_mb, accelerator); ``>=`` and ``<=`` compare
    the numeric facts cpu_count and ram_mb. ``*`` selects the whole fleet.
    """

    text: str
    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> CohortSelector:
        text = text.strip()
        if not text:
            raise InvalidRolloutError("cohort", "empty selector; use '*' for the whole fleet")
        if len(text) > MAX_SELECTOR_LENGTH:
            raise InvalidRolloutError("cohort", f"longer than {MAX_SELECTOR_LENGTH} characters")
        if text == "*":
            return cls(text="*", terms=())
        terms = []
        for part in text.split(","):
            match = _TERM.match(part)
            if match is None:
                raise InvalidRolloutError(
                    "cohort",
                    f"term {part.strip()!r} is not key=value, key!=value, key>=N or key<=N"
                    " (keys and values of [A-Za-z0-9_.-])",
                )
            key, op, value = match.groups()
            if op in (">=", "<="):
                if key not in _NUMERIC_KEYS:
                    raise InvalidRolloutError(
                        "cohort", f"{op} compares only {sorted(_NUMERIC_KEYS)}, not {key!r}"
                    )
                try:
                    float(value)
                except ValueError:
                    raise InvalidRolloutError(
                        "cohort", f"{key}{op}{value}: {value!r} is not a number"
                    ) from None
            if key == "accelerator" and op not in ("=", "!="):
                raise InvalidRolloutError("cohort", "accelerator takes = or != only")
            terms.append(Term(key, op, value))
        canonical = ",".join(f"{t.key}{t.op}{t.value}" for t in terms)
        return cls(text=canonical, terms=tuple(terms))

    def matches(self, tags: Sequence[str], hardware: Mapping[str, Any]) -> bool:
        tag_map = tag_dict(tags)
        return all(term.holds(tag_map, hardware) for term in self.terms)


def tag_dict(tags: Sequence[str]) -> dict[str, str]:
    """``["hw=rpi5", "kiosk"]`` -> ``{"hw": "rpi5", "kiosk": ""}``."""
    out: dict[str, str] = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        out[key] = value
    return out


# --- what a rollout moves --------------------------------------------------------------


class RolloutKind(StrEnum):
    RELEASE = "release"  # devices are assigned a release; judged by their install reports
    CONFIG = "config"  # devices get a config patch as a layer; judged by their config reports


def config_target_scope(cohort: CohortSelector) -> str:
    """The config scope a completed config rollout folds its patch into: ``fleet`` for
    ``*``, ``tag:key=value`` for a cohort of one tag. Any other cohort has no scope that
    names exactly its devices, so it is refused."""
    if not cohort.terms:
        return "fleet"
    if len(cohort.terms) == 1:
        term = cohort.terms[0]
        if term.op == "=" and term.key not in HARDWARE_KEYS:
            return f"tag:{term.key}={term.value}"
    raise InvalidRolloutError(
        "cohort",
        f"a config rollout's cohort is '*' (the patch then joins the fleet layer) or one tag"
        f" 'key=value' (it joins that tag's layer), not {cohort.text!r}; for a narrower set"
        " of devices, tag them first ('outpost-cp devices tag')",
    )


def config_outcome(state: str) -> Outcome:
    """A config report judged like an install report: ``applied`` is a success, a
    ``rejected`` or ``reverted`` version a failure."""
    return Outcome.COMMITTED if state == "applied" else Outcome.FAILED


# --- stages and buckets ----------------------------------------------------------------


def bucket_of(salt: str, device_id: str) -> int:
    """The device's bucket in ``[0, BUCKETS)``: stable for a rollout, fresh per rollout."""
    digest = hashlib.sha256(f"{salt}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


@dataclass(frozen=True)
class StagePlan:
    """Cumulative percentages of the cohort, strictly increasing, ending at most at 100."""

    percents: tuple[float, ...]

    @classmethod
    def parse(cls, values: Sequence[float]) -> StagePlan:
        if not values:
            raise InvalidRolloutError("stages", "at least one stage is needed, e.g. [1, 10, 100]")
        if len(values) > MAX_STAGES:
            raise InvalidRolloutError("stages", f"at most {MAX_STAGES} stages")
        previous = 0.0
        for value in values:
            if not math.isfinite(value) or value <= 0 or value > 100:
                raise InvalidRolloutError(
                    "stages", f"{value:g} is not a percentage in (0, 100] of the cohort"
                )
            if round(value * 100) != value * 100:
                raise InvalidRolloutError("stages", f"{value:g}: at most two decimals")
            if value <= previous:
                raise InvalidRolloutError(
                    "stages",
                    f"stages must increase ({previous:g} then {value:g}): each stage is the"
                    " share of the cohort that runs the release by its end",
                )
            previous = value
        return cls(percents=tuple(float(v) for v in values))

    def covers(self, stage: int, bucket: int) -> bool:
        """Whether a device in ``bucket`` belongs to ``stage`` (or an earlier one)."""
        return bucket < round(self.percents[stage] * BUCKETS / 100)

    def first_stage_of(self, bucket: int) -> int | None:
        for index in range(len(self.percents)):
            if self.covers(index, bucket):
                return index
        return None

    def is_last(self, stage: int) -> bool:
        return stage == len(self.percents) - 1


# --- what the moved devices reported ---------------------------------------------------


class Outcome(StrEnum):
    PENDING = "pending"  # assigned, no final report yet
    COMMITTED = "committed"  # passed its health window
    FAILED = "failed"  # rolled back, failed or refused
    TIMED_OUT = "timed_out"  # no final report within the stage timeout


def is_timed_out(assigned_at: datetime, timeout: timedelta, now: datetime) -> bool:
    return now - assigned_at >= timeout


@dataclass(frozen=True)
class StageCounts:
    """What the gates judge: every device the rollout has moved so far (all stages up to
    ``stage``), by outcome, plus named signals other services supply (e.g. telemetry)."""

    stage: int
    percent: float
    is_last: bool
    committed: int
    failed: int
    timed_out: int
    pending: int
    approved: bool = False
    signals: Mapping[str, Any] = field(default_factory=dict)

    @property
    def moved(self) -> int:
        return self.committed + self.failed + self.timed_out + self.pending

    @property
    def decided(self) -> int:
        return self.committed + self.failed + self.timed_out

    @property
    def failures(self) -> int:
        return self.failed + self.timed_out

    def label(self) -> str:
        return f"stage {self.stage + 1} ({self.percent:g}%)"


# --- gates -----------------------------------------------------------------------------


class Verdict(StrEnum):
    PASS = "pass"  # this gate lets the rollout advance
    WAIT = "wait"  # not enough evidence yet
    HALT = "halt"  # stop and roll back


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    reason: str
    numbers: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "verdict": self.verdict.value,
            "reason": self.reason,
            "numbers": dict(self.numbers),
        }


class Gate(Protocol):
    """A policy between stages. ``evaluate`` is pure; ``spec`` round-trips through
    :func:`gate_from_spec` (it is what the database stores)."""

    def evaluate(self, counts: StageCounts) -> GateResult: ...

    def spec(self) -> dict[str, Any]: ...


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%".replace(".0%", "%")


@dataclass(frozen=True)
class FailureRate:
    """Halt when more than ``max_rate`` of the decided devices failed, once at least
    ``min_sample`` devices have decided. Passes when every moved device has decided; a
    stage too small to reach the sample passes without judging (say so)."""

    max_rate: float
    min_sample: int

    def evaluate(self, counts: StageCounts) -> GateResult:
        name = "failure_rate"
        decided, failures = counts.decided, counts.failures
        rate = failures / decided if decided else 0.0
        numbers = {
            "failed": counts.failed,
            "timed_out": counts.timed_out,
            "decided": decided,
            "moved": counts.moved,
            "rate": round(rate, 4),
            "max_rate": self.max_rate,
            "min_sample": self.min_sample,
        }
        detail = (
            f"{failures} of {decided} devices failed the health window or timed out"
            f" ({_pct(rate)} {'>' if rate > self.max_rate else '<='} {_pct(self.max_rate)})"
        )
        if decided >= self.min_sample and rate > self.max_rate:
            return GateResult(name, Verdict.HALT, detail, numbers)
        if counts.pending:
            return GateResult(
                name,
                Verdict.WAIT,
                f"{counts.pending} of {counts.moved} devices have not reported yet",
                numbers,
            )
        if decided < self.min_sample:
            return GateResult(
                name,
                Verdict.PASS,
                f"{decided} devices decided, fewer than the minimum sample {self.min_sample}:"
                " the rate is judged at a later stage",
                numbers,
            )
        return GateResult(name, Verdict.PASS, detail, numbers)

    def spec(self) -> dict[str, Any]:
        return {"type": "failure_rate", "max_rate": self.max_rate, "min_sample": self.min_sample}


@dataclass(frozen=True)
class MaxFailures:
    """Halt as soon as more than ``limit`` devices failed or timed out, whatever the rate."""

    limit: int

    def evaluate(self, counts: StageCounts) -> GateResult:
        numbers = {"failures": counts.failures, "limit": self.limit}
        reason = f"{counts.failures} devices failed or timed out (limit {self.limit})"
        verdict = Verdict.HALT if counts.failures > self.limit else Verdict.PASS
        return GateResult("max_failures", verdict, reason, numbers)

    def spec(self) -> dict[str, Any]:
        return {"type": "max_failures", "limit": self.limit}


@dataclass(frozen=True)
class ManualApproval:
    """Wait for an operator's approval before leaving each stage but the last."""

    def evaluate(self, counts: StageCounts) -> GateResult:
        if counts.is_last or counts.approved:
            return GateResult("manual_approval", Verdict.PASS, "approved")
        return GateResult(
            "manual_approval",
            Verdict.WAIT,
            f"{counts.label()} awaits an operator's approval ('outpost-cp rollout approve')",
        )

    def spec(self) -> dict[str, Any]:
        return {"type": "manual_approval"}


@dataclass(frozen=True)
class AllOf:
    """Halts if any gate halts, waits if any waits, passes when all pass."""

    gates: tuple[Gate, ...]

    def evaluate(self, counts: StageCounts) -> GateResult:
        results = [g.evaluate(counts) for g in self.gates]
        for verdict in (Verdict.HALT, Verdict.WAIT):
            picked = [r for r in results if r.verdict is verdict]
            if picked:
                return _combine("all_of", verdict, picked, results)
        return _combine("all_of", Verdict.PASS, results, results)

    def spec(self) -> dict[str, Any]:
        return {"type": "all_of", "gates": [g.spec() for g in self.gates]}


@dataclass(frozen=True)
class AnyOf:
    """Passes if any gate passes, halts only when all halt, waits otherwise."""

    gates: tuple[Gate, ...]

    def evaluate(self, counts: StageCounts) -> GateResult:
        results = [g.evaluate(counts) for g in self.gates]
        passed = [r for r in results if r.verdict is Verdict.PASS]
        if passed:
            return _combine("any_of", Verdict.PASS, passed, results)
        if all(r.verdict is Verdict.HALT for r in results):
            return _combine("any_of", Verdict.HALT, results, results)
        return _combine(
            "any_of", Verdict.WAIT, [r for r in results if r.verdict is Verdict.WAIT], results
        )

    def spec(self) -> dict[str, Any]:
        return {"type": "any_of", "gates": [g.spec() for g in self.gates]}


def _combine(
    name: str, verdict: Verdict, reasons: list[GateResult], everything: list[GateResult]
) -> GateResult:
    return GateResult(
        name,
        verdict,
        "; ".join(r.reason for r in reasons),
        {"gates": [r.as_json() for r in everything]},
    )


GateFactory = Callable[[Mapping[str, Any]], Gate]
_GATE_TYPES: dict[str, GateFactory] = {}


def register_gate_type(name: str, factory: GateFactory) -> None:
    """Make a gate type storable and creatable by name (a telemetry gate registers here;
    the engine needs no change)."""
    _GATE_TYPES[name] = factory


def gate_from_spec(spec: Mapping[str, Any]) -> Gate:
    kind = spec.get("type")
    factory = _GATE_TYPES.get(str(kind))
    if factory is None:
        raise InvalidRolloutError(
            "gates", f"unknown gate type {kind!r}; known: {', '.join(sorted(_GATE_TYPES))}"
        )
    return factory(spec)


def _number(spec: Mapping[str, Any], key: str, low: float, high: float, what: str) -> float:
    value = spec.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise InvalidRolloutError(key, f"must be a number ({what})")
    if not low <= value <= high:
        raise InvalidRolloutError(key, f"{value:g} is out of range [{low:g}, {high:g}] ({what})")
    return float(value)


def _failure_rate(spec: Mapping[str, Any]) -> Gate:
    rate = _number(spec, "max_rate", 0.0, 1.0, "a fraction: 0.05 is 5%")
    sample = _number(spec, "min_sample", 1, 1_000_000, "devices")
    return FailureRate(max_rate=rate, min_sample=int(sample))


def _max_failures(spec: Mapping[str, Any]) -> Gate:
    return MaxFailures(limit=int(_number(spec, "limit", 0, 1_000_000, "devices")))


def _composite(kind: type[AllOf] | type[AnyOf]) -> GateFactory:
    def build(spec: Mapping[str, Any]) -> Gate:
        gates = spec.get("gates")
        if not isinstance(gates, list) or not gates or len(gates) > 16:
            raise InvalidRolloutError("gates", "a composite gate holds 1 to 16 gates")
        return kind(gates=tuple(gate_from_spec(g) for g in gates))

    return build


register_gate_type("failure_rate", _failure_rate)
register_gate_type("max_failures", _max_failures)
register_gate_type("manual_approval", lambda _spec: ManualApproval())
register_gate_type("all_of", _composite(AllOf))
register_gate_type("any_of", _composite(AnyOf))


# --- the rollout's life ----------------------------------------------------------------


class RolloutState(StrEnum):
    RUNNING = "running"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    HALTED = "halted"  # a gate fired; moved devices were re-assigned their prior release
    COMPLETED = "completed"  # every stage passed; the release is the cohort's default
    ABORTED = "aborted"  # stopped by an operator


ACTIVE_STATES = frozenset(
    {RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL, RolloutState.PAUSED}
)


class Step(StrEnum):
    WAIT = "wait"
    AWAIT_APPROVAL = "await_approval"
    ADVANCE = "advance"
    COMPLETE = "complete"
    HALT = "halt"


@dataclass(frozen=True)
class Decision:
    step: Step
    result: GateResult
    next_stage: int | None = None

    @property
    def message(self) -> str:
        return self.result.reason


def decide(plan: StagePlan, gate: Gate, counts: StageCounts) -> Decision:
    """What the rollout does next, given what its moved devices reported."""
    result = gate.evaluate(counts)
    if result.verdict is Verdict.HALT:
        return Decision(Step.HALT, result)
    if result.verdict is Verdict.WAIT:
        waiting_on_approval = counts.pending == 0 and not counts.approved and _only_approval(result)
        return Decision(Step.AWAIT_APPROVAL if waiting_on_approval else Step.WAIT, result)
    if plan.is_last(counts.stage):
        return Decision(Step.COMPLETE, result)
    return Decision(Step.ADVANCE, result, next_stage=counts.stage + 1)


def _only_approval(result: GateResult) -> bool:
    if result.gate == "manual_approval":
        return True
    inner = result.numbers.get("gates")
    if not isinstance(inner, list):
        return False
    waiting = [g for g in inner if g.get("verdict") == Verdict.WAIT.value]
    return bool(waiting) and all(g.get("gate") == "manual_approval" for g in waiting)


class Action(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    APPROVE = "approve"
    ABORT = "abort"


_ALLOWED: dict[Action, frozenset[RolloutState]] = {
    Action.PAUSE: frozenset({RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}),
    Action.RESUME: frozenset({RolloutState.PAUSED}),
    Action.APPROVE: frozenset({RolloutState.RUNNING, RolloutState.AWAITING_APPROVAL}),
    Action.ABORT: frozenset(
        {
            RolloutState.RUNNING,
            RolloutState.AWAITING_APPROVAL,
            RolloutState.PAUSED,
            RolloutState.HALTED,
        }
    ),
}


def after_action(state: RolloutState, action: Action, rollout_id: str) -> RolloutState:
    """The state an operator action leads to, or a conflict saying why it cannot."""
    if state not in _ALLOWED[action]:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[action]))
        raise ConflictError(
            f"rollout {rollout_id} is {state.value}; {action.value} applies only to a rollout"
            f" that is {allowed}"
        )
    if action is Action.PAUSE:
        return RolloutState.PAUSED
    if action is Action.ABORT:
        return RolloutState.ABORTED
    return RolloutState.RUNNING


def halt_summary(counts: StageCounts, decision: Decision) -> str:
    """The line ``rollout status`` shows for a halt, before the rollback part."""
    return f"{counts.label()}: {decision.message}; {counts.timed_out} timed out"
