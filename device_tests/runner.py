"""The suite: measure every threshold a profile sets on a target with the fixed workload,
and keep the device's state (load, temperature) beside the numbers. The measurement rules
and the orchestration are the agent's own (:func:`edge_agent.updates.acceptance.measure`),
so the suite and the on-device check judge alike; the clock is passed in.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_agent.updates.acceptance import (
    FigureResult,
    Observer,
    QueryRules,
    Status,
    Thresholds,
    measure,
)

__all__ = ["Environment", "SuiteResult", "load_average", "run_suite", "temperature_c"]


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


def run_suite(
    thresholds: Thresholds,
    rules: QueryRules,
    target: Observer,
    *,
    profile: str,
    device_class: str,
    workload_version: str,
    target_label: str,
    clock: Callable[[], float],
    now: Callable[[], datetime],
    facts: dict[str, Any] | None = None,
) -> SuiteResult:
    """Measure every figure ``thresholds`` sets on ``target`` and judge it."""
    started_at, t0 = now(), clock()
    before = (load_average(), temperature_c())
    figures = measure(thresholds, rules, target, clock)
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
        workload_version=workload_version,
        target=target_label,
        started_at=started_at,
        duration_s=clock() - t0,
        figures=figures,
        environment=environment,
        rules=rules,
        facts=facts or {},
    )
