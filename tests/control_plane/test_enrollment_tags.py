"""A device's own tags at enrollment are checked, and the operator's token tags win."""

from __future__ import annotations

import httpx

from protocol import generate_key_pair, paths
from tests.control_plane.conftest import ControlPlaneUnderTest, enroll_body


def _enroll(
    cp: ControlPlaneUnderTest, token_tags: list[str], device_tags: list[str]
) -> httpx.Response:
    token = cp.enrollment_token(tags=token_tags)
    return cp.client.post(
        paths.ENROLL, json=enroll_body(token, generate_key_pair(), "k", device_tags)
    )


def test_the_enrollment_token_tags_override_what_the_device_asks_for(
    cp: ControlPlaneUnderTest,
) -> None:
    r = _enroll(cp, ["hw=rpi5", "store=lisbon"], ["store=porto", "lobby"])
    assert r.status_code == 201, r.text
    device_id = r.json()["device_id"]
    shown = cp.client.get(f"/api/v1/devices/{device_id}", headers=cp.auth("viewer")).json()
    assert shown["tags"] == ["hw=rpi5", "lobby", "store=lisbon"]


def test_malformed_device_tags_are_refused_at_enrollment(cp: ControlPlaneUnderTest) -> None:
    for bad in (["store=porto", "store=faro"], ["hw=rpi 5"], ["=x"]):
        r = _enroll(cp, [], bad)
        assert r.status_code == 422, (bad, r.text)
        assert "tags[" in r.text
