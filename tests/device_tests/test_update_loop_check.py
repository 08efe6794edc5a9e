"""The on-device acceptance check inside the update loop, against the control-plane
simulator with a scripted runtime: a release slower than its thresholds for this device's
class is rolled back with the numbers in the signed report's acceptance block; a fast one
commits with them; thresholds for another class are not run."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.daemon import compose_update_loop
from edge_agent.release import InstalledRelease
from edge_agent.settings import AgentSettings
from edge_agent.store import ReleaseStore
from edge_agent.updates import CycleResult
from edge_agent.uplink.client import new_http_client
from protocol import InstallState, StatusReport
from tests.agent_updates.conftest import (
    BASE_URL,
    Device,
    RecordingActivator,
    ScriptedHealth,
    enroll_device,
)
from tests.agent_updates.simulator import ControlPlaneSimulator, release_of


class ScriptedObserver:
    def __init__(self, ttft_ms: float) -> None:
        self.ttft_ms = ttft_ms
        self.queries = 0

    def observe(self, kind: str, model: str | None, i: int) -> Mapping[str, float]:
        assert kind == "chat"
        self.queries += 1
        return {"ttft_ms": self.ttft_ms + (i % 5), "decode_tokens_per_s": 40.0}


class MeasuringHealth(ScriptedHealth):
    """Smoke requests as scripted, plus the acceptance queries (an AcceptanceProbe)."""

    def __init__(self, activator: RecordingActivator) -> None:
        super().__init__(activator)
        self.observed = ScriptedObserver(50.0)
        self.observed_releases: list[str] = []

    def observer(self, release: InstalledRelease) -> ScriptedObserver:
        assert self.activator.serving == release, "the check must measure the new release"
        self.observed_releases.append(release.release_version)
        return self.observed


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    sim = ControlPlaneSimulator()
    enrolled = enroll_device(sim, tmp_path / "state")
    enrolled.store.close()
    store = ReleaseStore.open(enrolled.state_dir)
    activator = RecordingActivator()
    health = MeasuringHealth(activator)
    stop = threading.Event()
    loop = compose_update_loop(
        settings=AgentSettings(
            state_dir=enrolled.state_dir, download_chunk_bytes=4096, device_class="x86-ci"
        ),
        identity=enrolled.identity,
        store=store,
        activator=activator,
        health=health,
        http=new_http_client(BASE_URL, transport=sim.transport),
        stop=stop,
        rng=lambda: 0.5,
    )
    d = Device(sim, enrolled.state_dir, enrolled.identity, store, loop, activator, health, stop)
    yield d
    d.store.close()


def thresholds(device_class: str, ttft_p95_ms: float) -> dict[str, Any]:
    block = {
        "thresholds": {"ttft_p95_ms": ttft_p95_ms},
        "measurement": {"warmup": 2, "min_queries": 25, "min_duration_s": 0.0},
    }
    return {"acceptance": {"device_classes": {device_class: block}}}


def last_report(device: Device) -> StatusReport:
    return sorted(device.sim.reports.values(), key=lambda r: r.at)[-1]


def test_slower_than_the_class_threshold_rolls_back_with_the_numbers(device: Device) -> None:
    health = device.health
    assert isinstance(health, MeasuringHealth)
    device.sim.assign(device.device_id, release_of(device.sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED
    assert health.observed_releases == []  # no thresholds: smoke checks only

    slow = release_of(device.sim, "b")
    slow.config = thresholds("x86-ci", 100)
    device.sim.assign(device.device_id, slow)
    health.observed.ttft_ms = 200.0
    assert device.cycle().result is CycleResult.FAILED

    assert device.serving_version() == "a"
    report = last_report(device)
    assert report.state is InstallState.ROLLED_BACK and report.serving_release_id == "rel-a"
    assert report.detail.startswith("acceptance check failed for device class x86-ci:")
    assert "ttft_p95_ms = 20" in report.detail and "required <= 100: fail" in report.detail
    assert "now serving demo a" in report.detail
    assert report.acceptance is not None and report.acceptance.passed is False
    (figure,) = report.acceptance.figures
    assert (figure.figure, figure.status, figure.n) == ("ttft_p95_ms", "fail", 25)
    assert figure.low is not None and figure.low > 100
    assert health.observed.queries == 27  # 2 warm-up + 25


def test_within_the_threshold_commits_and_reports_the_numbers(device: Device) -> None:
    fast = release_of(device.sim, "c")
    fast.config = thresholds("x86-ci", 100)
    device.sim.assign(device.device_id, fast)
    assert device.cycle().result is CycleResult.INSTALLED
    report = last_report(device)
    assert report.state is InstallState.COMMITTED
    assert "acceptance check passed for device class x86-ci: ttft_p95_ms = 5" in report.detail
    assert report.acceptance is not None and report.acceptance.passed is True


def test_thresholds_for_another_class_are_not_run(device: Device) -> None:
    health = device.health
    assert isinstance(health, MeasuringHealth)
    other = release_of(device.sim, "d")
    other.config = thresholds("rpi5", 0.001)
    device.sim.assign(device.device_id, other)
    health.observed.ttft_ms = 10_000.0
    assert device.cycle().result is CycleResult.INSTALLED
    assert health.observed_releases == []
    assert last_report(device).acceptance is None
