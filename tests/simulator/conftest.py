"""Fixtures: an initialized control plane in process (manual clock) and releases to assign."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulator import Fleet
from simulator.behaviour import BehaviourFunction
from simulator.profiles import ProfileFunction
from tests.control_plane.conftest import ControlPlaneUnderTest, make_control_plane, small_gguf


@pytest.fixture
def cp(tmp_path: Path) -> Iterator[ControlPlaneUnderTest]:
    """An initialized control plane on SQLite, driven through a TestClient."""
    under_test = make_control_plane(tmp_path)
    with under_test.client:
        yield under_test


def publish(cp: ControlPlaneUnderTest, tmp_path: Path, version: str) -> dict[str, Any]:
    """A release of one small GGUF model (each version with its own bytes)."""
    artifact = cp.upload(small_gguf(tmp_path, seed=sum(map(ord, version))), name="tiny-chat")
    return cp.publish([artifact["id"]], name="assistant", version=version)


def fleet(
    cp: ControlPlaneUnderTest,
    size: int,
    *,
    profile: ProfileFunction | None = None,
    behaviour: BehaviourFunction | None = None,
    http: Any = None,
) -> Fleet:
    """A simulated fleet speaking to ``cp`` on its clock, trusting its root (pinned)."""
    return Fleet.create(
        http or cp.client,
        size=size,
        clock=cp.clock,
        operator_token=cp.auth("operator")["Authorization"].removeprefix("Bearer "),
        profile=profile,
        behaviour=behaviour,
        root=cp.root,
    )


def devices(cp: ControlPlaneUnderTest) -> dict[str, dict[str, Any]]:
    """The control plane's device list, by id."""
    r = cp.client.get("/api/v1/devices", headers=cp.auth("viewer"))
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()}


def installed(cp: ControlPlaneUnderTest) -> dict[str, str | None]:
    """What the control plane believes each device serves (release id or None)."""
    return {
        device_id: (d["installed_release"] or {}).get("id") for device_id, d in devices(cp).items()
    }
