"""The suite: for every threshold a profile sets, send the fixed workload to the target
under the measurement rules and judge the figure (pure orchestration over a ``Target``;
the HTTP adapter is :mod:`device_tests.agent_client`, the clock is passed in).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from device_tests.workload import Workload
from edge_agent.updates.acceptance import (
    FIGURES,
    FigureResult,
    QueryRules,
    Status,
    Thresholds,
    collect,
    judge,
)

__all__ = [
    "ChatTiming",
    "Environment",
    "NotServed",
    "SuiteResult",
    "Target",
    "figure_name",
    "run_suite",
]


class NotServed(Exception):
    """The target serves nothing this figure can measure (no such model, no index)."""


@dataclass(frozen=True)
class ChatTiming:
    ttft_ms: float
    decode_tokens_per_s: float | None  # None: fewer than two tokens came back


class Target(Protocol):
    """What the suite measures: an agent over HTTP, or a release loaded in-process."""

    def models(self, kind: str) -> list[str]: ...

    def has_rag_index(self) -> bool: ...

    def chat(self, model: str, prompt: str, max_tokens: int) -> ChatTiming: ...

    def embed(self, model: str, sentence: str) -> float: ...

    def vision(self, model: str, image: bytes) -> float: ...

    def rag_query(self, question: str, k: int) -> float: ...

    def peak_rss_mb(self) -> float | None: ...

    def cold_start_ms(self) -> float | None: ...


@dataclass(frozen=True)
class Environment:
    """The device's state beside the numbers: load and temperature before and after."""

    machine: str
    cpus: int
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    temperature_c_before: float | None
    temperature_c_after: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "cpus": self.cpus,
            "loadavg_before": list(self.loadavg_before),
            "loadavg_after": list(self.loadavg_after),
            "temperature_c_before": self.temperature_c_before,
            "temperature_c_after": self.temperature_c_after,
        }


def load_average() -> tuple[float, float, float]:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def temperature_c() -> float | None:
    """The hottest sensor psutil can read (None where there is none, as in most VMs)."""
    import psutil

    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return None
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return None
    values = [t.current for entries in sensors.values() for t in entries if t.current]
    return round(max(values), 1) if values else None


@dataclass(frozen=True)
class SuiteResult:
    profile: str
    device_class: str
    workload_version: str
    target: str
    started_at: datetime
    duration_s: float
    figures: tuple[FigureResult, ...]
    environment: Environment
    rules: QueryRules
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every figure measured passed (not measured ones do not count; inconclusive
        ones are not passes)."""
        return all(f.status in (Status.PASS, Status.NOT_MEASURED) for f in self.figures)

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Status}
        for f in self.figures:
            out[f.status.value] += 1
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "suite": "outpost-device-tests",
            "profile": self.profile,
            "device_class": self.device_class,
            "workload_version": self.workload_version,
            "target": self.target,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "passed": self.passed,
            "counts": self.counts(),
            "rules": {
                "warmup": self.rules.warmup,
                "min_queries": self.rules.min_queries,
                "min_duration_s": self.rules.min_duration_s,
                "max_queries": self.rules.max_queries,
                "max_duration_s": self.rules.max_duration_s,
                "confidence": self.rules.confidence,
                "bootstrap_resamples": self.rules.bootstrap_resamples,
                "seed": self.rules.seed,
            },
            "environment": self.environment.as_json(),
            "facts": self.facts,
            "figures": [f.as_json() for f in self.figures],
        }


def figure_name(key: str, model: str | None) -> str:
    return key if model is None else f"{key}[{model}]"


def _first(target: Target, kind: str) -> str | None:
    names = target.models(kind)
    return names[0] if names else None


def run_suite(
    thresholds: Thresholds,
    rules: QueryRules,
    target: Target,
    workload: Workload,
    *,
    profile: str,
    device_class: str,
    target_label: str,
    clock: Callable[[], float],
    now: Callable[[], datetime],
    facts: dict[str, Any] | None = None,
) -> SuiteResult:
    """Measure every figure ``thresholds`` sets on ``target`` and judge it."""
    started_at, t0 = now(), clock()
    before = (load_average(), temperature_c())
    wanted = list(thresholds.items())
    keys = {key for key, _, _ in wanted}
    results: list[FigureResult] = []

    def judged(
        key: str, model: str | None, limit: float, samples: Sequence[float], note: str = ""
    ) -> None:
        spec = FIGURES[key]
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

    chat: list[ChatTiming] = []
    chat_note = ""
    if keys & {"ttft_p95_ms", "decode_tokens_per_s_p50"}:
        chat_model = _first(target, "llm")
        if chat_model is None:
            chat_note = "the target serves no chat model"
        else:
            chat = _chat_timings(target, chat_model, workload, rules, clock)
    for key, model, limit in wanted:
        samples: list[float] = []
        note = ""
        if key == "ttft_p95_ms":
            samples, note = [c.ttft_ms for c in chat], chat_note
        elif key == "decode_tokens_per_s_p50":
            samples = [c.decode_tokens_per_s for c in chat if c.decode_tokens_per_s is not None]
            note = chat_note
        elif key == "embedding_p95_ms":
            samples, note = _embedding(target, workload, rules, clock)
        elif key == "vision_p95_ms":
            assert model is not None
            samples, note = _vision(target, model, workload, rules, clock)
        elif key == "rag_query_p95_ms":
            samples, note = _rag(target, workload, rules, clock)
        elif key == "peak_rss_mb":
            rss = target.peak_rss_mb()
            samples = [] if rss is None else [rss]
            note = "" if rss is not None else "the target does not report its peak memory"
        elif key == "cold_start_ms":
            cold = target.cold_start_ms()
            samples = [] if cold is None else [cold]
            if cold is None:
                note = "a running agent has loaded its models: cold start is measured in-process"
        judged(key, model, limit, samples, note)
    environment = Environment(
        machine=platform.machine(),
        cpus=os.cpu_count() or 1,
        loadavg_before=before[0],
        loadavg_after=load_average(),
        temperature_c_before=before[1],
        temperature_c_after=temperature_c(),
    )
    return SuiteResult(
        profile=profile,
        device_class=device_class,
        workload_version=workload.version,
        target=target_label,
        started_at=started_at,
        duration_s=clock() - t0,
        figures=tuple(results),
        environment=environment,
        rules=rules,
        facts=facts or {},
    )


Clock = Callable[[], float]


def _chat_timings(
    target: Target, model: str, workload: Workload, rules: QueryRules, clock: Clock
) -> list[ChatTiming]:
    timings: list[ChatTiming] = []

    def one(i: int) -> float:
        prompt = workload.pick(workload.chat_prompts, i)
        timing = target.chat(model, prompt, workload.chat_max_tokens)
        timings.append(timing)
        return timing.ttft_ms

    collect(one, rules, clock)
    return timings[rules.warmup :]


def _embedding(
    target: Target, workload: Workload, rules: QueryRules, clock: Clock
) -> tuple[list[float], str]:
    model = _first(target, "embedding")
    if model is None:
        return [], "the target serves no embedding model"

    def one(i: int) -> float:
        return target.embed(model, workload.pick(workload.sentences, i))

    return collect(one, rules, clock), ""


def _vision(
    target: Target, model: str, workload: Workload, rules: QueryRules, clock: Clock
) -> tuple[list[float], str]:
    images = workload.images_for(model)

    def one(i: int) -> float:
        return target.vision(model, images[i % len(images)])

    try:
        return collect(one, rules, clock), ""
    except NotServed as e:
        return [], str(e)


def _rag(
    target: Target, workload: Workload, rules: QueryRules, clock: Clock
) -> tuple[list[float], str]:
    if not target.has_rag_index():
        return [], "the target serves no RAG index"

    def one(i: int) -> float:
        return target.rag_query(workload.pick(workload.questions, i), workload.rag_k)

    return collect(one, rules, clock), ""
