"""Fixtures: a control plane (SQLite and PostgreSQL) whose workers the test drives, and
devices that send signed telemetry reports built by the simulator's report builder."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from control_plane.telemetry.service import TelemetryService
from protocol import paths
from protocol.telemetry import TelemetryReport
from simulator.telemetry import telemetry_report
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    FakeDevice,
    database_url,
    make_control_plane,
    postgres_url,
)

__all__ = ["database_url", "postgres_url"]  # fixtures: SQLite and a fresh PostgreSQL


@dataclass
class Reporter:
    """A device that sends telemetry reports (signed like the agent signs them)."""

    device: FakeDevice
    device_class: str = "rpi5"
    sequence: int = 0

    @property
    def id(self) -> str:
        return self.device.id

    def build(self, *, release_id: str | None = None, **fields: Any) -> TelemetryReport:
        self.sequence += 1
        end = self.device.cp.clock()
        fields.setdefault("rng", np.random.default_rng(self.sequence))
        return telemetry_report(
            device_id=self.id,
            sequence=self.sequence,
            period_start=end - timedelta(minutes=5),
            period_end=end,
            release_id=release_id,
            device_class=self.device_class,
            **fields,
        )

    def send_bytes(self, body: bytes, *, signer: FakeDevice | None = None) -> Any:
        path = paths.DEVICE_TELEMETRY
        headers = (signer or self.device).signed_headers("POST", path, body)
        return self.device.cp.client.post(
            path, content=body, headers={**headers, "Content-Type": "application/json"}
        )

    def send(self, report: TelemetryReport) -> Any:
        return self.send_bytes(report.model_dump_json().encode())


def telemetry_of(cp: ControlPlaneUnderTest) -> TelemetryService:
    service: TelemetryService = cp.app.state.control_plane.telemetry
    return service


@pytest.fixture
def tcp(tmp_path: Path, database_url: str | None) -> Iterator[ControlPlaneUnderTest]:
    """A control plane on SQLite and on PostgreSQL, workers off (tests drive them)."""
    under_test = make_control_plane(
        tmp_path, database_url, workers_enabled=False, telemetry_rate_limit_reports=5
    )
    with under_test.client:
        yield under_test


@pytest.fixture
def reporter(tcp: ControlPlaneUnderTest) -> Reporter:
    return Reporter(tcp.enroll("kiosk-t", tags=["hw=rpi5"]))
