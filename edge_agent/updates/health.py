"""The health window's verdict (pure: values in, values out, no I/O).

After a release is activated the agent sends one smoke request per model it serves
(:func:`smoke_checks`), and commits the release only if :func:`judge` passes what came
back: every planned check ran, none failed, and each met the release's acceptance
thresholds. A release config may carry them in an ``acceptance`` block::

    {"acceptance": {"max_smoke_ms": {"chat": 5000, "embedding": 2000,
                                     "vision": 1000, "rag": 1000}}}

``max_smoke_ms.<kind>`` caps how long each smoke request of that kind may take on the
device, in milliseconds (loading the model is not counted). Kinds left out are not timed;
unknown keys are refused, so a typo cannot switch a threshold off.

``device_classes.<class>`` holds the per-device acceptance thresholds (p95 latency,
throughput, memory: :class:`~edge_agent.updates.acceptance.Thresholds`) for devices of
that class (the agent's ``device_class`` setting), and optionally how to measure them::

    {"acceptance": {"device_classes": {"x86-ci": {
        "thresholds": {"vision_inference_p50_ms": {"text-orientation": 4.0}},
        "measurement": {"min_queries": 20, "max_duration_s": 15}}}}}

After the smoke checks pass, the agent runs that bounded suite in the health window and
rolls back with the measured numbers when a figure fails, or is inconclusive (unless
``on_inconclusive`` is ``"commit"``). See docs/device-tests.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edge_agent.errors import ConfigError
from edge_agent.release import InstalledRelease
from edge_agent.updates.acceptance import FigureResult, Measurement, Status, Thresholds
from protocol import AcceptanceFigure, AcceptanceResult

__all__ = [
    "ACCEPTANCE_RUNBOOK",
    "HEALTH_RUNBOOK",
    "ON_DEVICE_MEASUREMENT",
    "SMOKE_KIND_OF_ARTIFACT",
    "Acceptance",
    "ClassAcceptance",
    "HealthVerdict",
    "SmokeCheck",
    "SmokeKind",
    "SmokeResult",
    "judge",
    "judge_acceptance",
    "smoke_checks",
    "wire_figure",
]

HEALTH_RUNBOOK = "docs/runbooks/agent-health-window.md"
ACCEPTANCE_RUNBOOK = "docs/runbooks/acceptance-check-failed.md"

SmokeKind = Literal["chat", "embedding", "vision", "rag"]

SMOKE_KIND_OF_ARTIFACT: Mapping[str, SmokeKind] = {
    "llm": "chat",
    "embedding": "embedding",
    "vision-classify": "vision",
    "vision-detect": "vision",
    "rag-index": "rag",
}


@dataclass(frozen=True)
class SmokeCheck:
    """One smoke request to send: of ``kind``, to the release's artifact ``artifact``."""

    kind: SmokeKind
    artifact: str

    def __str__(self) -> str:
        return f"{self.kind} smoke request on {self.artifact!r}"


@dataclass(frozen=True)
class SmokeResult:
    """What one smoke request did. ``error`` is empty when it succeeded."""

    check: SmokeCheck
    elapsed_ms: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


class _MaxSmokeMs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    chat: float | None = Field(default=None, gt=0)
    embedding: float | None = Field(default=None, gt=0)
    vision: float | None = Field(default=None, gt=0)
    rag: float | None = Field(default=None, gt=0)


# The bounded suite of the health window: fewer queries, and a cap on its time.
ON_DEVICE_MEASUREMENT = Measurement(
    warmup=2, min_queries=20, min_duration_s=1.0, max_queries=200, max_duration_s=15.0
)


class ClassAcceptance(BaseModel):
    """The acceptance thresholds a release sets for one device class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thresholds: Thresholds
    measurement: Measurement = ON_DEVICE_MEASUREMENT
    on_inconclusive: Literal["roll_back", "commit"] = "roll_back"


class _AcceptanceBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_smoke_ms: _MaxSmokeMs = Field(default_factory=_MaxSmokeMs)
    device_classes: dict[
        Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")],
        ClassAcceptance,
    ] = Field(default_factory=dict, max_length=64)


@dataclass(frozen=True)
class Acceptance:
    """The thresholds a release sets for its own health window."""

    max_smoke_ms: Mapping[SmokeKind, float] = field(default_factory=dict)
    device_classes: Mapping[str, ClassAcceptance] = field(default_factory=dict)

    def for_class(self, device_class: str | None) -> ClassAcceptance | None:
        """The suite this device runs in its health window (None: only smoke checks)."""
        return None if device_class is None else self.device_classes.get(device_class)

    @classmethod
    def from_release_config(cls, config: Mapping[str, Any]) -> Acceptance:
        """Read ``config["acceptance"]``; ConfigError names the bad key (the operator's)."""
        raw = config.get("acceptance", {})
        if not isinstance(raw, Mapping):
            raise ConfigError('release config "acceptance" must be an object')
        try:
            block = _AcceptanceBlock.model_validate(raw)
        except ValidationError as e:
            problems = "; ".join(
                f"acceptance.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in e.errors()
            )
            raise ConfigError(
                f"release config is invalid: {problems} (allowed: acceptance.max_smoke_ms."
                "{chat,embedding,vision,rag} in milliseconds, > 0; acceptance.device_classes."
                "<class>.{thresholds,measurement,on_inconclusive}, see docs/device-tests.md)"
            ) from e
        caps = block.max_smoke_ms
        limits: dict[SmokeKind, float | None] = {
            "chat": caps.chat,
            "embedding": caps.embedding,
            "vision": caps.vision,
            "rag": caps.rag,
        }
        return cls(
            max_smoke_ms={k: v for k, v in limits.items() if v is not None},
            device_classes=dict(block.device_classes),
        )


def smoke_checks(release: InstalledRelease) -> tuple[SmokeCheck, ...]:
    """One check per artifact the runtime serves, in release order (configs need none)."""
    return tuple(
        SmokeCheck(SMOKE_KIND_OF_ARTIFACT[a.kind], a.name)
        for a in release.artifacts
        if a.kind in SMOKE_KIND_OF_ARTIFACT
    )


@dataclass(frozen=True)
class HealthVerdict:
    """Pass or fail, with a reason a human can act on (which check, which numbers)."""

    passed: bool
    reason: str
    failures: tuple[str, ...] = ()
    results: tuple[SmokeResult, ...] = ()
    acceptance: AcceptanceResult | None = None  # the device-class suite's numbers, if run


def _measured(result: SmokeResult, acceptance: Acceptance) -> str:
    limit = acceptance.max_smoke_ms.get(result.check.kind)
    bound = "" if limit is None else f" (max {limit:g})"
    return f"{result.check.kind} {result.check.artifact!r} {result.elapsed_ms:.0f} ms{bound}"


def judge(
    checks: Iterable[SmokeCheck], results: Iterable[SmokeResult], acceptance: Acceptance
) -> HealthVerdict:
    """The verdict of a health window: every check in ``checks`` must have a successful
    result within its kind's ``max_smoke_ms``."""
    planned = tuple(checks)
    got = tuple(results)
    by_check = {r.check: r for r in got}
    failures: list[str] = []
    for check in planned:
        result = by_check.get(check)
        if result is None:
            failures.append(f"{check} did not run")
            continue
        if not result.ok:
            failures.append(f"{check} failed after {result.elapsed_ms:.0f} ms: {result.error}")
            continue
        limit = acceptance.max_smoke_ms.get(check.kind)
        if not math.isfinite(result.elapsed_ms):
            failures.append(f"{check} has no valid timing ({result.elapsed_ms})")
        elif limit is not None and result.elapsed_ms > limit:
            failures.append(
                f"{check} took {result.elapsed_ms:.0f} ms, over the release's"
                f" acceptance.max_smoke_ms.{check.kind} of {limit:g} ms"
            )
    if failures:
        reason = f"health window failed: {'; '.join(failures)} (see {HEALTH_RUNBOOK})"
        return HealthVerdict(False, reason, tuple(failures), got)
    measured = ", ".join(_measured(by_check[c], acceptance) for c in planned)
    return HealthVerdict(
        True, f"health window passed: {measured or 'the release serves no model'}", (), got
    )


def wire_figure(figure: FigureResult) -> AcceptanceFigure:
    """A judged figure as the status report carries it."""
    est = figure.estimate
    return AcceptanceFigure(
        figure=figure.figure,
        unit=figure.unit,
        bound=figure.bound,
        threshold=figure.threshold,
        status=figure.status.value,
        value=None if figure.value is None else round(figure.value, 4),
        low=None if est is None else round(est.low, 4),
        high=None if est is None else round(est.high, 4),
        n=None if est is None else est.n,
    )


def judge_acceptance(
    device_class: str,
    suite: ClassAcceptance,
    figures: Iterable[FigureResult],
    smoke: HealthVerdict,
    *,
    duration_s: float,
    loadavg_1m: float | None = None,
    temperature_c: float | None = None,
) -> HealthVerdict:
    """The health window's verdict once the smoke checks passed and the release's suite for
    ``device_class`` ran: a failed figure rolls back, and so does an inconclusive one unless
    the release says ``on_inconclusive: commit``. The reason carries the numbers."""
    got = tuple(figures)
    bad = {Status.FAIL} if suite.on_inconclusive == "commit" else {Status.FAIL, Status.INCONCLUSIVE}
    failing = [f for f in got if f.status in bad]
    result = AcceptanceResult(
        device_class=device_class,
        passed=not failing and all(f.status is not Status.INCONCLUSIVE for f in got),
        figures=[wire_figure(f) for f in got],
        duration_s=round(max(duration_s, 0.0), 3),
        loadavg_1m=loadavg_1m,
        temperature_c=temperature_c,
    )
    measured = "; ".join(f.verdict_line() for f in got) or "no figure applies to this release"
    if failing:
        reason = (
            f"acceptance check failed for device class {device_class}:"
            f" {'; '.join(f.verdict_line() for f in failing)} (all figures: {measured};"
            f" {result.duration_s:g} s, load {loadavg_1m}; see {ACCEPTANCE_RUNBOOK})"
        )
        failures = tuple(f.verdict_line() for f in failing)
        return HealthVerdict(False, reason, failures, smoke.results, result)
    reason = f"{smoke.reason}; acceptance check passed for device class {device_class}: {measured}"
    return HealthVerdict(True, reason, (), smoke.results, result)
