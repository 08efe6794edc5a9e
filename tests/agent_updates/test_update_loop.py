"""The update loop against the simulated control plane: installs, resume, offline, reports."""

from __future__ import annotations

import pytest

from control_plane.repository import tuf_signer
from edge_agent.updates import MAX_ACTIVATION_ATTEMPTS, CycleResult
from protocol import InstallState, StatusReport
from tests.agent_updates.conftest import Device, restart
from tests.agent_updates.simulator import Release, release_of


class PowerCut(BaseException):
    """Stands in for the process dying: nothing in the agent catches it."""


def reports(device: Device) -> list[StatusReport]:
    return sorted(device.sim.reports.values(), key=lambda r: r.at)


def states(device: Device) -> list[InstallState]:
    return [r.state for r in reports(device)]


def test_a_verified_release_is_installed_activated_and_reported(device: Device) -> None:
    sim = device.sim
    assert device.cycle().result is CycleResult.NO_ASSIGNMENT
    sim.assign(device.device_id, release_of(sim, "a"))
    outcome = device.cycle()
    assert outcome.result is CycleResult.INSTALLED and outcome.assignment_version == 1
    assert device.serving_version() == "a"
    assert states(device) == [
        InstallState.DOWNLOADING,
        InstallState.VERIFIED,
        InstallState.ACTIVE,
        InstallState.COMMITTED,
    ]
    device.assert_store_holds_only_verified_releases()
    status = device.loop.status()
    assert status.release_version == "a" and status.online and status.pending_reports == 0


def test_an_unchanged_assignment_downloads_nothing(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    requests = len(sim.target_requests)
    assert device.cycle().result is CycleResult.UP_TO_DATE
    assert len(sim.target_requests) == requests
    assert len(device.activator.activated) == 1


def test_an_interrupted_download_resumes_with_a_range_request(device: Device) -> None:
    sim = device.sim
    release = release_of(sim, "a")
    sim.assign(device.device_id, release)
    sim.cut_targets_after = 10_000  # the link drops after 10 kB each time
    assert device.cycle().result is CycleResult.OFFLINE
    part = device.store.partial_path(release.targets[0].sha256)
    assert part.stat().st_size == 10_000
    sim.cut_targets_after = None
    assert device.cycle().result is CycleResult.INSTALLED
    assert sim.target_requests[-1] == (release.targets[0].path, "bytes=10000-")
    assert device.serving_version() == "a"


def test_a_download_interrupted_by_a_restart_resumes_after_it(device: Device) -> None:
    sim = device.sim
    release = release_of(sim, "a")
    sim.assign(device.device_id, release)
    sim.cut_targets_after = 20_000
    device.cycle()
    device = restart(device)
    sim.cut_targets_after = None
    assert device.cycle().result is CycleResult.INSTALLED
    assert sim.target_requests[-1][1] == "bytes=20000-"
    device.store.close()


def test_offline_the_device_keeps_serving_and_queues_reports(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    sim.assign(device.device_id, release_of(sim, "b"))
    device.health.during = lambda: setattr(sim, "online", False)  # the link drops mid-install
    assert device.cycle().result is CycleResult.INSTALLED
    device.health.during = lambda: None
    assert device.serving_version() == "b"
    assert device.loop.status().pending_reports == 1  # "committed" could not be sent
    assert device.cycle().result is CycleResult.OFFLINE
    assert device.serving_version() == "b"
    assert device.loop.status().pending_reports == 1
    sim.online = True
    device.cycle()
    assert device.loop.status().pending_reports == 0
    committed = [r for r in sim.reports.values() if r.state is InstallState.COMMITTED]
    assert [r.release_id for r in committed] == ["rel-a", "rel-b"]  # each exactly once


def test_reports_whose_acks_were_lost_take_effect_exactly_once(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    sim.drop_status_acks = True  # the server stores each report, the device never hears back
    device.cycle()
    device.cycle()
    device = restart(device)  # the queue survives a restart too
    sim.drop_status_acks = False
    device.cycle()
    assert device.loop.status().pending_reports == 0
    assert sim.report_posts > len(sim.reports)  # re-sent...
    assert states(device) == [  # ...but each took effect once
        InstallState.DOWNLOADING,
        InstallState.VERIFIED,
        InstallState.ACTIVE,
        InstallState.COMMITTED,
    ]
    device.store.close()


def test_a_release_the_runtime_cannot_load_is_rolled_back(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    sim.assign(device.device_id, release_of(sim, "b"))
    device.activator.fail_with = RuntimeError("llama.cpp could not load the model")
    outcome = device.cycle()
    assert outcome.result is CycleResult.FAILED
    assert device.serving_version() == "a"
    assert device.store.pointers() == ("assignment-1", None)
    last = reports(device)[-1]
    assert last.state is InstallState.ROLLED_BACK and last.serving_release_id == "rel-a"
    assert "could not activate" in last.detail and "now serving demo a" in last.detail
    device.assert_store_holds_only_verified_releases()
    assert device.cycle().result is CycleResult.GIVEN_UP  # no retry loop on a bad release
    sim.assign(device.device_id, release_of(sim, "c"))
    assert device.cycle().result is CycleResult.INSTALLED


def test_repeatedly_interrupted_activation_is_given_up(device: Device) -> None:
    """A release that kills the agent while activating must not crash-loop it."""
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    sim.assign(device.device_id, release_of(sim, "b"))
    for _ in range(MAX_ACTIVATION_ATTEMPTS):
        device.activator.fail_with = PowerCut()  # the process dies inside activation
        with pytest.raises(PowerCut):
            device.cycle()
        device = restart(device)
        assert device.serving_version() == "a"
    outcome = device.cycle()
    assert outcome.result is CycleResult.GIVEN_UP
    assert device.serving_version() == "a"
    assert states(device)[-1] is InstallState.FAILED
    device.store.close()


def test_a_renewed_assignment_keeps_the_rollback_target(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    b = release_of(sim, "b")
    sim.assign(device.device_id, b)
    device.cycle()
    sim.assign(device.device_id, Release(b.id, b.name, b.version, b.targets))  # re-signed
    assert device.cycle().result is CycleResult.INSTALLED
    assert device.store.pointers() == ("assignment-3", "assignment-1")


def test_a_refusal_is_reported_again_once_things_were_healthy_in_between(device: Device) -> None:
    sim = device.sim
    sim.assign(device.device_id, release_of(sim, "a"))
    device.cycle()
    sim.expire_timestamp()
    device.cycle()
    device.cycle()
    assert states(device).count(InstallState.REFUSED) == 1
    sim.files.update(sim.repo.refresh_timestamp(tuf_signer(sim.keys["timestamp"]), sim.now))
    assert device.cycle().result is CycleResult.UP_TO_DATE
    sim.expire_timestamp()
    device.cycle()
    assert states(device).count(InstallState.REFUSED) == 2
