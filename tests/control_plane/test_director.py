"""The director's rules (pure) and the device-signed endpoints that deliver them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.director import (
    ReleaseFacts,
    build_assignment,
    needs_reissue,
    next_version,
    sign_assignment,
)
from protocol import ASSIGNMENT_PAYLOAD_TYPE, SignatureError, TargetRef, paths, verify_envelope
from protocol.keys import generate_key_pair
from tests.control_plane.conftest import ControlPlaneUnderTest, FakeDevice, small_gguf

T0 = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
TARGET = TargetRef(
    name="m", path=f"{'a' * 64}/m.gguf", sha256="a" * 64, length=10, kind="llm", format="gguf"
)
RELEASE = ReleaseFacts(id="rel_1", name="r", version="1", targets=(TARGET,), config={"k": 1})


def test_versions_start_at_one_and_go_up() -> None:
    assert next_version(None) == 1
    assert next_version(41) == 42


def test_assignment_carries_release_targets_and_expiry() -> None:
    a = build_assignment(
        device_id="dev_1", version=3, release=RELEASE, now=T0, ttl=timedelta(days=7)
    )
    assert (a.device_id, a.version, a.release_id, a.config) == ("dev_1", 3, "rel_1", {"k": 1})
    assert a.targets == [TARGET]
    assert a.issued_at == T0.replace(microsecond=0)
    assert a.expires_at == a.issued_at + timedelta(days=7)


def test_signed_assignment_verifies_only_with_the_director_key() -> None:
    director, other = generate_key_pair(), generate_key_pair()
    a = build_assignment(device_id="d", version=1, release=RELEASE, now=T0, ttl=timedelta(hours=1))
    envelope = sign_assignment(a, director)
    payload = verify_envelope(
        envelope,
        payload_type=ASSIGNMENT_PAYLOAD_TYPE,
        trusted_keys={director.key_id: director.public},
    )
    assert payload["release_id"] == "rel_1"
    with pytest.raises(SignatureError):
        verify_envelope(
            envelope,
            payload_type=ASSIGNMENT_PAYLOAD_TYPE,
            trusted_keys={other.key_id: other.public},
        )


def test_reissue_at_half_life() -> None:
    issued, expires = T0, T0 + timedelta(days=2)
    assert not needs_reissue(issued_at=issued, expires_at=expires, now=T0 + timedelta(hours=23))
    assert needs_reissue(issued_at=issued, expires_at=expires, now=T0 + timedelta(hours=24))


# --- device authentication --------------------------------------------------------------


def test_request_signed_by_another_key_is_refused(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    impostor = FakeDevice(device.id, generate_key_pair(), cp)
    r = impostor.get_assignment()
    assert r.status_code == 401
    assert "signature" in r.json()["error"]["message"]


def test_stale_request_is_refused(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    headers = device.signed_headers("GET", paths.DEVICE_ASSIGNMENT)
    cp.clock.advance(minutes=10)
    r = cp.client.get(paths.DEVICE_ASSIGNMENT, headers=headers)
    assert r.status_code == 401
    assert "clock" in r.json()["error"]["message"]


def test_unknown_device_and_missing_header_are_refused(cp: ControlPlaneUnderTest) -> None:
    ghost = FakeDevice("dev_ghost", generate_key_pair(), cp)
    assert ghost.get_assignment().status_code == 401
    r = cp.client.get(paths.DEVICE_ASSIGNMENT)
    assert r.status_code == 401
    assert "Outpost-Device" in r.json()["error"]["message"]
    garbled = cp.client.get(paths.DEVICE_ASSIGNMENT, headers={"Authorization": "Outpost-Device x"})
    assert garbled.status_code == 401


def test_signature_covers_the_body(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    body = json.dumps(
        {
            "report_id": "c" * 32,
            "device_id": device.id,
            "state": "failed",
            "at": cp.clock().isoformat(),
        }
    ).encode()
    headers = device.signed_headers("POST", paths.DEVICE_STATUS, body)
    swapped = body.replace(b"failed", b"active")
    r = cp.client.post(paths.DEVICE_STATUS, content=swapped, headers=headers)
    assert r.status_code == 401


# --- status reports ---------------------------------------------------------------------


def test_device_may_only_report_about_itself(cp: ControlPlaneUnderTest) -> None:
    device, other = cp.enroll("a"), cp.enroll("b")
    r = device.report(device_id=other.id)
    assert r.status_code == 403
    assert "only report about itself" in r.json()["error"]["message"]


def test_late_report_of_an_older_install_does_not_move_the_device_back(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    device = cp.enroll()
    art = cp.upload(small_gguf(tmp_path))
    old, new = cp.publish([art["id"]], version="1"), cp.publish([art["id"]], version="2")
    cp.assign(device.id, old["id"])
    cp.assign(device.id, new["id"])
    assert device.report(release_id=new["id"], assignment_version=2).status_code == 200
    assert device.report(release_id=old["id"], assignment_version=1).status_code == 200  # queued
    view = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth("viewer")).json()
    assert view["installed_release"]["version"] == "2"
    assert view["installed_assignment_version"] == 2


def test_failed_install_leaves_the_installed_release(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    device = cp.enroll()
    art = cp.upload(small_gguf(tmp_path))
    rel = cp.publish([art["id"]])
    cp.assign(device.id, rel["id"])
    r = device.report(release_id=rel["id"], assignment_version=1, state="refused", detail="hash")
    assert r.status_code == 200, r.text
    view = cp.client.get(f"/api/v1/devices/{device.id}", headers=cp.auth("viewer")).json()
    assert view["installed_release"] is None
    assert (view["last_status"]["state"], view["last_status"]["detail"]) == ("refused", "hash")


def test_invalid_status_report_is_422_with_the_field(cp: ControlPlaneUnderTest) -> None:
    device = cp.enroll()
    r = device.report(state="exploded")
    assert r.status_code == 422
    assert "state" in r.json()["error"]["message"]
    body = b"{broken"
    r = cp.client.post(
        paths.DEVICE_STATUS,
        content=body,
        headers=device.signed_headers("POST", paths.DEVICE_STATUS, body),
    )
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]["message"]


def test_assigning_unknown_things_is_404(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    device = cp.enroll()
    r = cp.client.post(
        f"/api/v1/devices/{device.id}/assignment",
        json={"release_id": "rel_nope"},
        headers=cp.auth(),
    )
    assert r.status_code == 404
    assert "rel_nope" in r.json()["error"]["message"]
    art = cp.upload(small_gguf(tmp_path))
    rel = cp.publish([art["id"]])
    r = cp.client.post(
        "/api/v1/devices/dev_nope/assignment", json={"release_id": rel["id"]}, headers=cp.auth()
    )
    assert r.status_code == 404
