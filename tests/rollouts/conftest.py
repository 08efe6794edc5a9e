"""Fixtures: a control plane whose rollout worker the test drives by hand, and a small
fleet of protocol-speaking devices (the simulator package drives the large fleets)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control_plane.rollouts.service import RolloutService
from protocol import SignedEnvelope, generate_key_pair, paths
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    FakeDevice,
    enroll_body,
    make_control_plane,
    small_gguf,
)


@dataclass
class Kiosk:
    """A device that commits what it is assigned, unless told to fail its health window."""

    device: FakeDevice
    fails_health: bool = False
    silent: bool = False
    running: str | None = None
    seen_version: int = 0
    history: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.device.id

    def step(self) -> None:
        r = self.device.get_assignment()
        if r.status_code == 204:
            return
        assert r.status_code == 200, r.text
        payload = json.loads(SignedEnvelope.model_validate_json(r.content).payload_bytes())
        version, release = payload["version"], payload["release_id"]
        if version <= self.seen_version:
            return
        self.seen_version = version
        if self.silent:
            return
        if release == self.running:
            self._report("committed", version, release)
            return
        self._report("active", version, release)
        if self.fails_health:
            self._report("rolled_back", version, release, serving_release_id=self.running)
        else:
            self.running = release
            self.history.append(release)
            self._report("committed", version, release)

    def _report(self, state: str, version: int, release: str, **extra: Any) -> None:
        r = self.device.report(state=state, assignment_version=version, release_id=release, **extra)
        assert r.status_code == 200, r.text


@dataclass
class Fleet:
    cp: ControlPlaneUnderTest
    kiosks: list[Kiosk] = field(default_factory=list)
    releases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def rollouts(self) -> RolloutService:
        service: RolloutService = self.cp.app.state.control_plane.rollouts
        return service

    def enroll(self, n: int, tags: list[str], **behaviour: Any) -> list[Kiosk]:
        token_ids = []
        new = []
        for i in range(n):
            key = generate_key_pair()
            token = self.cp.enrollment_token(tags=tags)
            r = self.cp.client.post(
                paths.ENROLL, json=enroll_body(token, key, f"kiosk-{len(self.kiosks)}", tags)
            )
            assert r.status_code == 201, r.text
            kiosk = Kiosk(FakeDevice(r.json()["device_id"], key, self.cp), **behaviour)
            self.kiosks.append(kiosk)
            new.append(kiosk)
            token_ids.append(i)
        return new

    def step(self, rounds: int = 1) -> None:
        for _ in range(rounds):
            for kiosk in self.kiosks:
                kiosk.step()

    def tick(self) -> None:
        service = self.rollouts
        now = self.cp.clock()
        for rollout_id in service.active_ids():
            service.advance(rollout_id, now)
        service.converge_defaults(now)

    def run(self, rollout_id: str, rounds: int = 20) -> dict[str, Any]:
        """Alternate device polls and worker ticks until the rollout stops moving."""
        for _ in range(rounds):
            self.step()
            self.tick()
            state = self.show(rollout_id)["state"]
            if state not in ("running",):
                break
        return self.show(rollout_id)

    def show(self, rollout_id: str) -> dict[str, Any]:
        r = self.cp.client.get(f"/api/v1/rollouts/{rollout_id}", headers=self.cp.auth("viewer"))
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def create(self, release: str, cohort: str = "hw=rpi5", **body: Any) -> Any:
        payload = {
            "release": release,
            "cohort": cohort,
            "stages": [10, 50, 100],
            "max_failure_rate": 0.05,
            "min_sample": 5,
            "stage_timeout_seconds": 1800,
            **body,
        }
        return self.cp.client.post(
            "/api/v1/rollouts", json=payload, headers=self.cp.auth("operator")
        )

    def release(self, version: str, seed: int, tmp_path: Path) -> dict[str, Any]:
        artifact = self.cp.upload(small_gguf(tmp_path, values=64 + seed, seed=seed))
        body = self.cp.publish([artifact["id"]], name="kiosk-assistant", version=version)
        self.releases[version] = body
        return body

    def installed(self) -> dict[str, str | None]:
        r = self.cp.client.get("/api/v1/devices", headers=self.cp.auth("viewer"))
        return {d["id"]: (d["installed_release"] or {}).get("version") for d in r.json()}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    cp = make_control_plane(tmp_path, workers_enabled=False)
    with cp.client:
        yield Fleet(cp)
