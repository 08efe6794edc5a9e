"""Fixtures: a control plane (SQLite and PostgreSQL) with a seeded fleet - devices of two
classes, one with a hostile name and tag, two releases, and a rollout halted by its
failure-rate gate at the first stage - and a way to sign in to its dashboard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from control_plane.services import ControlPlane
from control_plane.storage.models import Device
from simulator.telemetry import telemetry_report
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    cp,
    database_url,
    make_control_plane,
    postgres_url,
)
from tests.rollouts.conftest import Fleet
from tests.telemetry_cp.conftest import Reporter

__all__ = ["cp", "database_url", "postgres_url"]  # `seeded` runs on both databases

RPI5, JETSONS = 7, 2  # the hostile device is the seventh rpi5
DEVICES = RPI5 + JETSONS
# Each sets window.__pwned if it ever runs in the browser.
HOSTILE_NAME = '<script>window.__pwned="name"</script><img src=x onerror="window.__pwned=1">'
HOSTILE_TAG = 'note="><script>window.__pwned="tag"</script>'


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]*)"', html)
    assert match, "the page carries no CSRF field"
    return match.group(1)


def sign_in(client: TestClient, token: str) -> Any:
    """Sign in through the form as a browser does; return the answer to the POST."""
    page = client.get("/dashboard/login")
    assert page.status_code == 200, page.text
    return client.post(
        "/dashboard/login",
        data={"token": token, "csrf": csrf_of(page.text)},
        headers={"Origin": str(client.base_url).rstrip("/")},
        follow_redirects=False,
    )


def signed_in_client(cp: ControlPlaneUnderTest, role: str) -> TestClient:
    """A second browser (its own cookie jar) signed in with a token of ``role``."""
    client = TestClient(cp.app)
    token = cp.auth(role)["Authorization"].removeprefix("Bearer ")
    r = sign_in(client, token)
    assert r.status_code == 303, r.text
    return client


@dataclass
class SeededFleet:
    fleet: Fleet
    halted_rollout: str
    hostile_device: str

    @property
    def cp(self) -> ControlPlaneUnderTest:
        return self.fleet.cp

    @property
    def service(self) -> ControlPlane:
        control_plane: ControlPlane = self.cp.app.state.control_plane
        return control_plane


def seed(fleet: Fleet, tmp_path: Path) -> SeededFleet:
    fleet.enroll(RPI5 - 1, ["hw=rpi5", "store=lisbon"])
    fleet.enroll(JETSONS, ["hw=jetson-orin-nano"])
    hostile = fleet.enroll(1, ["hw=rpi5"])[0]
    # A tag the API would refuse today, as a database edited by hand (or an older
    # version) could hold it: the page must still escape it.
    service: ControlPlane = fleet.cp.app.state.control_plane
    with service.db.transaction() as session:
        session.execute(
            update(Device)
            .where(Device.id == hostile.id)
            .values(name=HOSTILE_NAME, tags=["hw=rpi5", HOSTILE_TAG])
        )
    v1 = fleet.release("1.0.0", 1, tmp_path)
    for kiosk in fleet.kiosks:
        fleet.cp.assign(kiosk.id, v1["id"])
    fleet.step()
    fleet.release("1.1.0", 2, tmp_path)
    for kiosk in fleet.kiosks[: RPI5 - 1 : 2]:  # half of the rpi5s fail their health window
        kiosk.fails_health = True
    r = fleet.create("kiosk-assistant@1.1.0", stages=[50, 100], min_sample=2)
    assert r.status_code == 201, r.text
    shown = fleet.run(r.json()["id"])
    assert shown["state"] == "halted", shown  # at stage 1, or 2 when 1 held no failure
    return SeededFleet(fleet=fleet, halted_rollout=shown["id"], hostile_device=hostile.id)


TELEMETRY_HOURS = 3


def send_telemetry(seeded: SeededFleet) -> None:
    """Every device reports a few hours of latencies, requests and errors (noised as the
    protocol declares, by the simulator's report builder), signed like the agent signs;
    the aggregation worker's pass then folds them in. Jetsons answer twice as slowly."""
    fleet, cp = seeded.fleet, seeded.cp
    v1 = fleet.releases["1.0.0"]["id"]
    rng = np.random.default_rng(9)
    now = cp.clock()
    for n, kiosk in enumerate(fleet.kiosks):
        slow = 2.0 if kiosk.device.id in {k.id for k in fleet.kiosks[RPI5 - 1 : -1]} else 1.0
        reporter = Reporter(kiosk.device, device_class="jetson-orin-nano" if slow > 1 else "rpi5")
        for hour in range(TELEMETRY_HOURS, 0, -1):
            end = now - timedelta(hours=hour - 1, minutes=1)
            report = telemetry_report(
                device_id=kiosk.id,
                sequence=hour,
                period_start=end - timedelta(minutes=5),
                period_end=end,
                release_id=v1,
                device_class=reporter.device_class,
                rng=np.random.default_rng(100 * n + hour),
                latencies={
                    "chat_ttft_seconds": list(rng.gamma(4.0, 0.05 * slow, 60)),
                    "chat_time_per_output_token_seconds": list(rng.gamma(4.0, 0.004 * slow, 60)),
                    "vision_seconds": list(rng.gamma(4.0, 0.002 * slow, 40)),
                    "rag_seconds": list(rng.gamma(4.0, 0.004 * slow, 30)),
                },
                requests={"chat": 60, "vision": 40, "rag": 30},
                errors={"server_error": 2 + hour},
            )
            r = reporter.send(report)
            assert r.status_code == 200, r.text
    seeded.service.telemetry.aggregate_pending(now)


@pytest.fixture
def seeded(tmp_path: Path, database_url: str | None) -> Iterator[SeededFleet]:
    """A seeded fleet, once on SQLite and once on a fresh PostgreSQL database."""
    cp = make_control_plane(tmp_path, database_url, workers_enabled=False)
    with cp.client:
        yield seed(Fleet(cp), tmp_path)


@pytest.fixture
def seeded_sqlite(tmp_path: Path) -> Iterator[SeededFleet]:
    """A seeded fleet on SQLite only (what the test checks does not touch the database)."""
    cp = make_control_plane(tmp_path, workers_enabled=False)
    with cp.client:
        yield seed(Fleet(cp), tmp_path)
