"""What the control plane believes a device serves follows the device's own reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.control_plane.conftest import ControlPlaneUnderTest, FakeDevice, small_gguf


def report(device: FakeDevice, **fields: Any) -> None:
    r = device.report(**fields)
    assert r.status_code == 200, r.text


def _installed(cp: ControlPlaneUnderTest, device_id: str) -> str | None:
    body = cp.client.get(f"/api/v1/devices/{device_id}", headers=cp.auth("viewer")).json()
    return None if body["installed_release"] is None else body["installed_release"]["version"]


def test_rolled_back_and_failed_reports_move_the_installed_release_to_what_serves(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    device = cp.enroll()
    v1 = cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1.0.0")
    v2 = cp.publish([cp.upload(small_gguf(tmp_path, seed=2))["id"]], version="1.1.0")
    cp.assign(device.id, v1["id"])
    report(device, state="active", assignment_version=1, release_id=v1["id"])
    assert _installed(cp, device.id) == "1.0.0"
    report(device, state="committed", assignment_version=1, release_id=v1["id"])
    cp.assign(device.id, v2["id"])
    report(device, state="active", assignment_version=2, release_id=v2["id"])
    assert _installed(cp, device.id) == "1.1.0", "in its health window, 1.1.0 serves"
    report(
        device,
        state="rolled_back",
        assignment_version=2,
        release_id=v2["id"],
        serving_release_id=v1["id"],
    )
    assert _installed(cp, device.id) == "1.0.0"
    cp.assign(device.id, v2["id"])
    report(device, state="active", assignment_version=3, release_id=v2["id"])
    report(
        device,
        state="failed",
        assignment_version=3,
        release_id=v2["id"],
        serving_release_id=v1["id"],
    )
    assert _installed(cp, device.id) == "1.0.0"


def test_a_first_release_that_fails_its_health_window_leaves_nothing_installed(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    device = cp.enroll()
    v1 = cp.publish([cp.upload(small_gguf(tmp_path, seed=1))["id"]], version="1.0.0")
    cp.assign(device.id, v1["id"])
    report(device, state="active", assignment_version=1, release_id=v1["id"])
    assert _installed(cp, device.id) == "1.0.0"
    report(device, state="rolled_back", assignment_version=1, release_id=v1["id"])
    assert _installed(cp, device.id) is None
