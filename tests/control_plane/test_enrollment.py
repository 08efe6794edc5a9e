"""Enrollment: one-time tokens, device keys, and what a bad request is told."""

from __future__ import annotations

from protocol import paths
from protocol.keys import generate_key_pair
from tests.control_plane.conftest import ControlPlaneUnderTest, enroll_body

SMALL_ORDER_POINT = "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"
NOT_A_CURVE_POINT = "02" + "00" * 31


def test_enrolled_device_gets_token_tags_and_its_own(cp: ControlPlaneUnderTest) -> None:
    token = cp.enrollment_token(tags=["store-12", "tier:pilot"])
    body = enroll_body(token, generate_key_pair(), name="till-3", tags=["lobby"])
    r = cp.client.post(paths.ENROLL, json=body)
    assert r.status_code == 201
    device = cp.client.get(
        f"/api/v1/devices/{r.json()['device_id']}", headers=cp.auth("viewer")
    ).json()
    assert device["tags"] == ["lobby", "store-12", "tier:pilot"]
    assert device["hardware"]["ram_mb"] == 4096
    assert device["installed_release"] is None


def test_reused_token_is_refused(cp: ControlPlaneUnderTest) -> None:
    token = cp.enrollment_token()
    assert cp.client.post(paths.ENROLL, json=enroll_body(token, generate_key_pair())).is_success
    r = cp.client.post(paths.ENROLL, json=enroll_body(token, generate_key_pair()))
    assert r.status_code == 401
    assert "already used" in r.json()["error"]["message"]


def test_expired_token_is_refused(cp: ControlPlaneUnderTest) -> None:
    token = cp.enrollment_token(expires_in_seconds=60)
    cp.clock.advance(seconds=61)
    r = cp.client.post(paths.ENROLL, json=enroll_body(token, generate_key_pair()))
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]


def test_unknown_token_is_refused_without_echoing_it(cp: ControlPlaneUnderTest) -> None:
    guess = "oet_" + "A" * 40
    r = cp.client.post(paths.ENROLL, json=enroll_body(guess, generate_key_pair()))
    assert r.status_code == 401
    assert "unknown" in r.json()["error"]["message"]
    assert guess not in r.text


def test_key_that_is_not_a_curve_point_is_refused_and_token_kept(cp: ControlPlaneUnderTest) -> None:
    token = cp.enrollment_token()
    for bad in (NOT_A_CURVE_POINT, SMALL_ORDER_POINT):
        body = {**enroll_body(token, generate_key_pair()), "device_public_key": bad}
        r = cp.client.post(paths.ENROLL, json=body)
        assert r.status_code == 422
        assert "Ed25519" in r.json()["error"]["message"]
    assert cp.client.post(paths.ENROLL, json=enroll_body(token, generate_key_pair())).is_success


def test_one_key_cannot_enroll_two_devices(cp: ControlPlaneUnderTest) -> None:
    key = generate_key_pair()
    assert cp.client.post(paths.ENROLL, json=enroll_body(cp.enrollment_token(), key)).is_success
    token = cp.enrollment_token()
    r = cp.client.post(paths.ENROLL, json=enroll_body(token, key))
    assert r.status_code == 409
    # the refused attempt did not burn the token
    assert cp.client.post(paths.ENROLL, json=enroll_body(token, generate_key_pair())).is_success


def test_malformed_enrollment_names_the_bad_field(cp: ControlPlaneUnderTest) -> None:
    body = enroll_body(cp.enrollment_token(), generate_key_pair())
    body["hardware"]["cpu_count"] = 0
    r = cp.client.post(paths.ENROLL, json=body)
    assert r.status_code == 422
    assert "hardware.cpu_count" in r.json()["error"]["message"]
    assert body["token"] not in r.text
