"""Stand-ins for the telemetry tests: a seeded noise mechanism, a settable clock, fixed
system facts, and a reporter wired to a real state database."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from edge_agent.api import create_local_api
from edge_agent.runtime import ModelRegistry
from edge_agent.settings import AgentSettings
from edge_agent.store.state_db import StateDB
from edge_agent.telemetry.agent import TelemetryAgent
from edge_agent.telemetry.metrics import AgentMetrics
from edge_agent.telemetry.policy import TelemetryPolicy, resolve_policy
from edge_agent.telemetry.reporter import TelemetryReporter
from edge_agent.telemetry.store import OutboxLimits, TelemetryStore
from edge_agent.telemetry.system import SystemSample
from protocol.remote_config import TelemetrySettings
from protocol.telemetry import Mechanism

START = datetime(2026, 12, 1, tzinfo=UTC)


class SeededLaplace:
    """Discrete Laplace from ``random.Random``: reproducible, NOT private (tests only)."""

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    @property
    def name(self) -> Mechanism:
        return "discrete_laplace"

    def epsilon(self, scale: float, sensitivity: int) -> float:
        return sensitivity / scale

    def _geometric(self, p: float) -> int:
        return int(math.log(1.0 - self._rng.random()) / math.log(1.0 - p))

    def release(self, values: Sequence[int], scale: float) -> list[int]:
        p = 1.0 - math.exp(-1.0 / scale)
        return [v + self._geometric(p) - self._geometric(p) for v in values]


class NoNoise(SeededLaplace):
    """Charges like the real mechanism and adds nothing: for exact assertions."""

    def release(self, values: Sequence[int], scale: float) -> list[int]:
        return list(values)


class Clock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class FixedSystem:
    def sample(self) -> SystemSample:
        return SystemSample(
            rss_bytes=200 << 20, cpu_percent=5.0, load_average_1m=0.5, temperature_celsius=None
        )

    def uptime_seconds(self) -> float:
        return 60.0


def policy_of(**settings: Any) -> TelemetryPolicy:
    return resolve_policy(None, TelemetrySettings.model_validate(settings))


def make_reporter(
    db: StateDB,
    clock: Clock,
    *,
    policy: TelemetryPolicy | None = None,
    metrics: AgentMetrics | None = None,
    limits: OutboxLimits | None = None,
    mechanism: SeededLaplace | None = None,
    device_id: str = "dev-1",
    checkpoint: Callable[[str], None] | None = None,
) -> TelemetryReporter:
    chosen = policy or policy_of()
    return TelemetryReporter(
        store=TelemetryStore(db, checkpoint=checkpoint),
        metrics=metrics or AgentMetrics(),
        policy=lambda: chosen,
        system=FixedSystem(),
        mechanism=mechanism or SeededLaplace(),
        limits=limits or OutboxLimits(720, 8 << 20),
        device_id=device_id,
        device_class="x86-ci",
        agent_version="0.1.0",
        runtime_versions={"opendp": "0.16.0"},
        release_id=lambda: "rel-1",
        models_loaded=lambda: 1,
        clock=clock,
    )


def open_db(path: Path) -> StateDB:
    return StateDB(path / "state.db")


def telemetry_app(
    registry: ModelRegistry, settings: AgentSettings, *, api_token: str, device_id: str
) -> tuple[FastAPI, TelemetryAgent]:
    """The local API as the daemon composes it for telemetry: ``/metrics``, the
    generation observer and the counting middleware (outermost)."""
    telemetry = TelemetryAgent(
        settings,
        device_id=device_id,
        layers=lambda: (None, TelemetrySettings()),
        release_id=lambda: registry.release.release_id if registry.release else None,
        models_loaded=lambda: sum(1 for m in registry.models() if m.loaded),
    )
    app = create_local_api(
        registry,
        settings,
        api_token=api_token,
        extra_routers=[telemetry.router()],
        generation_observer=telemetry.observer,
    )
    telemetry.install(app)
    return app, telemetry
