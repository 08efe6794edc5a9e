"""The health window's verdict (pure: values in, values out, no I/O).

After a release is activated the agent sends one smoke request per model it serves
(:func:`smoke_checks`), and commits the release only if :func:`judge` passes what came
back: every planned check ran, none failed, and each met the release's acceptance
thresholds. A release config may carry them in an ``acceptance`` block::

    {"acceptance": {"max_smoke_ms": {"chat": 5000, "embedding": 2000,
                                     "vision": 1000, "rag": 1000}}}

``max_smoke_ms.<kind>`` caps how long each smoke request of that kind may take on the
device, in milliseconds (loading the model is not counted). Kinds left out are not timed;
unknown keys are refused, so a typo cannot switch a threshold off. The full per-device
acceptance suite (p95 over many requests) will add keys to this block.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import ConfigError
from edge_agent.release import InstalledRelease

__all__ = [
    "HEALTH_RUNBOOK",
    "SMOKE_KIND_OF_ARTIFACT",
    "Acceptance",
    "HealthVerdict",
    "SmokeCheck",
    "SmokeKind",
    "SmokeResult",
    "judge",
    "smoke_checks",
]

HEALTH_RUNBOOK = "docs/runbooks/agent-health-window.md"

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


class _AcceptanceBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_smoke_ms: _MaxSmokeMs = Field(default_factory=_MaxSmokeMs)


@dataclass(frozen=True)
class Acceptance:
    """The thresholds a release sets for its own health window."""

    max_smoke_ms: Mapping[SmokeKind, float] = field(default_factory=dict)

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
                "{chat,embedding,vision,rag} in milliseconds, > 0)"
            ) from e
        caps = block.max_smoke_ms
        limits: dict[SmokeKind, float | None] = {
            "chat": caps.chat,
            "embedding": caps.embedding,
            "vision": caps.vision,
            "rag": caps.rag,
        }
        return cls(max_smoke_ms={k: v for k, v in limits.items() if v is not None})


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
