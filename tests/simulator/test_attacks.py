"""A simulated device refuses what the agent's trust code refuses, and says so."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from protocol import InstallState, paths
from simulator import PollOutcome
from tests.control_plane.conftest import ControlPlaneUnderTest, FakeDevice
from tests.simulator.conftest import devices, fleet, installed, publish


class AssignmentProxy:
    """Passes every request to the control plane; rewrites assignment answers."""

    def __init__(self, inner: ControlPlaneUnderTest, rewrite: Callable[[bytes], bytes]) -> None:
        self.inner = inner.client
        self.rewrite = rewrite

    def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        r = self.inner.request(method, url, content=content, headers=headers)
        if url == paths.DEVICE_ASSIGNMENT and r.status_code == 200:
            return httpx.Response(200, content=self.rewrite(r.content))
        return httpx.Response(r.status_code, content=r.content)


def flip_a_payload_byte(body: bytes) -> bytes:
    envelope = json.loads(body)
    payload = bytearray(base64.b64decode(envelope["payload"]))
    payload[len(payload) // 2] ^= 0x01
    envelope["payload"] = base64.b64encode(bytes(payload)).decode()
    return json.dumps(envelope).encode()


def test_a_tampered_assignment_is_refused_and_reported(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 3, http=AssignmentProxy(cp, flip_a_payload_byte))
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    for device_id in sim.device_ids():
        cp.assign(device_id, release["id"])

    result = sim.step()
    assert result.outcomes == {PollOutcome.REFUSED: 3}
    assert result.reports == {InstallState.REFUSED: 3}
    assert result.new_assignments == 0
    listed = devices(cp)
    assert {d["last_status"]["state"] for d in listed.values()} == {"refused"}
    assert all("not signed by the director" in d["last_status"]["detail"] for d in listed.values())
    assert set(installed(cp).values()) == {None}
    assert {d.serving for d in sim.devices} == {None}

    again = sim.step()  # refused again, but reported once
    assert again.outcomes == {PollOutcome.REFUSED: 3}
    assert again.reports == {}


def test_an_assignment_that_is_not_an_envelope_is_refused(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    sim = fleet(cp, 1, http=AssignmentProxy(cp, lambda body: b'{"payload": "x"}'))
    sim.step()
    release = publish(cp, tmp_path, "1.0.0")
    cp.assign(sim.device_ids()[0], release["id"])
    assert sim.step().reports == {InstallState.REFUSED: 1}
    (listed,) = devices(cp).values()
    assert "not a signed envelope" in listed["last_status"]["detail"]


def test_a_replayed_older_assignment_is_refused(cp: ControlPlaneUnderTest, tmp_path: Path) -> None:
    proxy = AssignmentProxy(cp, lambda body: body)
    sim = fleet(cp, 1, http=proxy)
    sim.step()
    (device_id,) = sim.device_ids()
    v1, v2 = publish(cp, tmp_path, "1.0.0"), publish(cp, tmp_path, "2.0.0")
    cp.assign(device_id, v1["id"])
    old = FakeDevice(device_id, sim.device(0).key, cp).get_assignment().content
    assert sim.step().reports[InstallState.COMMITTED] == 1
    cp.assign(device_id, v2["id"])
    assert sim.step().reports[InstallState.COMMITTED] == 1

    proxy.rewrite = lambda body: old  # the attacker serves the version-1 envelope again
    result = sim.step()
    assert result.outcomes == {PollOutcome.REFUSED: 1}
    assert result.reports == {InstallState.REFUSED: 1}
    assert "replayed" in devices(cp)[device_id]["last_status"]["detail"]
    assert installed(cp)[device_id] == v2["id"]
    assert sim.device(0).serving_release_id == v2["id"]


def test_an_expired_new_assignment_is_refused_and_the_device_keeps_serving(
    cp: ControlPlaneUnderTest, tmp_path: Path
) -> None:
    proxy = AssignmentProxy(cp, lambda body: body)
    sim = fleet(cp, 1, http=proxy)
    sim.step()
    (device_id,) = sim.device_ids()
    v1, v2 = publish(cp, tmp_path, "1.0.0"), publish(cp, tmp_path, "2.0.0")
    cp.assign(device_id, v1["id"])
    assert sim.step().reports[InstallState.COMMITTED] == 1
    cp.assign(device_id, v2["id"])
    stale = FakeDevice(device_id, sim.device(0).key, cp).get_assignment().content

    cp.clock.advance(seconds=cp.settings.assignment_ttl.total_seconds() + 60)
    proxy.rewrite = lambda body: stale  # a mirror that stopped updating
    result = sim.step()
    assert result.reports == {InstallState.REFUSED: 1}
    assert "expired" in devices(cp)[device_id]["last_status"]["detail"]
    assert sim.device(0).serving_release_id == v1["id"]
    assert installed(cp)[device_id] == v1["id"]
