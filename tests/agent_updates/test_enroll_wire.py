"""The enrollment request on the wire: a device with no bundle-installed release sends the
body a control plane from before bundles accepts (its messages refuse unknown fields)."""

from __future__ import annotations

import json

import httpx

from edge_agent.uplink import enroll_device, new_http_client
from protocol import EnrollRequest, EnrollResponse, HardwareFacts
from protocol.messages import InstalledRelease

HARDWARE = HardwareFacts(arch="x86_64", os="linux", cpu_count=2, ram_mb=4096)


def sent_body(request: EnrollRequest) -> dict[str, object]:
    bodies: list[dict[str, object]] = []

    def answer(r: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(r.content))
        return httpx.Response(200, content=EnrollResponse(device_id="dev-1").model_dump_json())

    with new_http_client("http://cp", transport=httpx.MockTransport(answer)) as http:
        assert enroll_device(http, request).device_id == "dev-1"
    (body,) = bodies
    return body


def request(installed: InstalledRelease | None = None) -> EnrollRequest:
    return EnrollRequest(
        token="t" * 32,
        device_public_key="ab" * 32,
        name="kiosk",
        hardware=HARDWARE,
        installed=installed,
    )


def test_a_device_without_a_bundle_release_sends_no_installed_key() -> None:
    body = sent_body(request())
    assert "installed" not in body
    # what an older control plane parses: every key it knows, nothing else
    old_keys = {"protocol_version", "token", "device_public_key", "name", "hardware", "tags"}
    assert set(body) == old_keys


def test_a_bundle_installed_device_sends_its_release() -> None:
    body = sent_body(request(InstalledRelease(release_id="rel-1", assignment_version=3)))
    assert body["installed"] == {"release_id": "rel-1", "assignment_version": 3}
