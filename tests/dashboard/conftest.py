"""Fixtures: a control plane (SQLite and PostgreSQL) with a seeded fleet - devices of two
classes, one with a hostile name and tag, two releases, and a rollout halted by its
failure-rate gate at the first stage - and a way to sign in to its dashboard."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from control_plane.services import ControlPlane
from control_plane.storage.models import Device
from tests.control_plane.conftest import (
    ControlPlaneUnderTest,
    cp,
    database_url,
    make_control_plane,
    postgres_url,
)
from tests.rollouts.conftest import Fleet

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
