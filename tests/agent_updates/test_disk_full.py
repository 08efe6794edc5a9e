"""Full disks (issue 8, row 1), on a real small tmpfs: a download that cannot fit is never
started and is reported; one that fills the disk mid-way gives its space back; a restart
on a full disk still serves the verified release; an unwritable store serves read-only."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from edge_agent.daemon import compose_update_loop, open_store
from edge_agent.settings import AgentSettings
from edge_agent.store import Recovery, ReleaseStore
from edge_agent.updates import CycleResult
from edge_agent.uplink import new_http_client
from protocol import InstallState, StatusReport
from tests.agent_updates.conftest import Device, RecordingActivator, ScriptedHealth, enroll_device
from tests.agent_updates.simulator import (
    BASE_URL,
    ControlPlaneSimulator,
    Release,
    gguf_bytes,
    release_of,
)
from tests.small_disk import fill, free, remount, small_disk

DISK = 8 << 20
MARGIN = 1 << 20
_SPACE = re.compile(r"not enough space: need (\d+) bytes .* have (\d+) bytes")


def open_on(
    sim: ControlPlaneSimulator,
    state_dir: Path,
    device: Device,
    *,
    margin: int = MARGIN,
    checkpoint: Callable[[str], None] | None = None,
) -> tuple[Device, Recovery]:
    """The device ``device`` reopened (as after a restart) with a free-space margin."""
    device.store.close()
    store = ReleaseStore.open(state_dir)
    recovery = store.recover(free_space_margin=margin)
    activator = RecordingActivator()
    if recovery.release is not None:
        activator.activate(recovery.release)
    health = ScriptedHealth(activator)
    stop = threading.Event()
    settings = AgentSettings(
        state_dir=state_dir, download_chunk_bytes=4096, download_free_space_margin_bytes=margin
    )
    loop = compose_update_loop(
        settings=settings,
        identity=device.identity,
        store=store,
        activator=activator,
        health=health,
        http=new_http_client(BASE_URL, transport=sim.transport),
        stop=stop,
        rng=lambda: 0.5,
        checkpoint=checkpoint,
    )
    return Device(sim, state_dir, device.identity, store, loop, activator, health, stop), recovery


def big_release(sim: ControlPlaneSimulator, tag: str, size: int) -> Release:
    target = sim.publish(f"model-{tag}", gguf_bytes(tag, size))
    return Release(id=f"rel-{tag}", name="demo", version=tag, targets=[target])


def failed_reports(sim: ControlPlaneSimulator) -> list[StatusReport]:
    return [r for r in sim.reports.values() if r.state is InstallState.FAILED]


def installed_a(sim: ControlPlaneSimulator, state_dir: Path, *, margin: int = MARGIN) -> Device:
    device, _ = open_on(sim, state_dir, enroll_device(sim, state_dir), margin=margin)
    sim.assign(device.device_id, release_of(sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED
    return device


def test_a_release_larger_than_the_free_space_is_never_downloaded_and_is_reported(
    sim: ControlPlaneSimulator, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", DISK) as disk:
        device = installed_a(sim, disk / "state")
        sim.assign(device.device_id, big_release(sim, "big", 12 << 20))
        requests = len(sim.target_requests)

        outcome = device.cycle()

        assert outcome.result is CycleResult.FAILED, outcome
        assert sim.target_requests[requests:] == [], "not one byte may be requested"
        assert list(device.store.downloads_dir.iterdir()) == []
        (report,) = failed_reports(sim)
        assert report.assignment_version == 2 and report.release_id == "rel-big"
        match = _SPACE.search(report.detail)
        assert match is not None, report.detail
        need, have = int(match.group(1)), int(match.group(2))
        assert need == (12 << 20) + MARGIN
        assert abs(have - free(disk)) < 256 << 10 and have < need
        assert device.serving_version() == "a"
        assert device.loop.status().last_error is not None
        assert "not enough space" in device.loop.status().last_error
        # the next check refuses again without reporting again, and still serves
        assert device.cycle().result is CycleResult.FAILED
        assert len(failed_reports(sim)) == 1 and device.serving_version() == "a"
        device.store.close()


def test_a_disk_that_fills_mid_download_gets_its_space_back_and_the_install_retries(
    sim: ControlPlaneSimulator, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", DISK) as disk:
        filler = disk / "filler"
        filled = threading.Event()

        def someone_fills_the_disk(step: str) -> None:  # after the first chunk is on disk
            if step == "download" and not filled.is_set():
                filled.set()
                size = fill(filler)
                os.truncate(filler, size - (512 << 10))  # 512 kB left: the download takes it

        device = installed_a(sim, disk / "state", margin=0)
        device, _ = open_on(
            sim, disk / "state", device, margin=0, checkpoint=someone_fills_the_disk
        )
        release = big_release(sim, "b", 3 << 20)
        sim.assign(device.device_id, release)

        outcome = device.cycle()

        assert filled.is_set()
        assert outcome.result is CycleResult.FAILED and "not enough space" in outcome.detail
        assert not device.store.partial_path(release.targets[0].sha256).exists()
        assert free(disk) >= 400 << 10, "the partial download's space is given back"
        (report,) = failed_reports(sim)
        assert report.assignment_version == 2 and "partial file was deleted" in report.detail
        assert device.serving_version() == "a"
        # space freed: the next cycle installs it
        filler.unlink()
        assert device.cycle().result is CycleResult.INSTALLED
        assert device.serving_version() == "b"
        device.store.close()


def test_a_restart_on_a_disk_filled_by_a_partial_download_serves_the_verified_release(
    sim: ControlPlaneSimulator, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", DISK) as disk:
        device = installed_a(sim, disk / "state")
        release = big_release(sim, "b", 5 << 20)
        sim.assign(device.device_id, release)
        sim.cut_targets_after = 3 << 20  # the link drops after 3 MB: a partial stays
        assert device.cycle().result is CycleResult.OFFLINE
        part = device.store.partial_path(release.targets[0].sha256)
        assert part.stat().st_size == 3 << 20
        fill(disk / "logs")  # and then something else fills the disk to the last byte
        assert free(disk) < 64 << 10

        device, recovery = open_on(sim, disk / "state", device)  # the agent restarts

        assert recovery.release is not None and recovery.release.release_version == "a"
        assert device.serving_version() == "a"
        assert not part.exists(), "a partial that cannot be finished here is deleted"
        assert any("deleted the partial download" in a for a in recovery.actions)
        assert free(disk) >= 3 << 20
        sim.cut_targets_after = None
        assert device.cycle().result is CycleResult.FAILED  # 5 MB + margin do not fit now
        (report,) = failed_reports(sim)
        assert "not enough space" in report.detail
        assert device.serving_version() == "a"
        device.store.close()


def test_a_store_that_cannot_be_written_is_served_read_only_until_it_can(
    sim: ControlPlaneSimulator, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", DISK) as disk:
        state_dir = disk / "state"
        installed_a(sim, state_dir).store.close()
        settings = AgentSettings(state_dir=state_dir, download_free_space_margin_bytes=MARGIN)
        remount(disk, read_only=True)
        try:
            opened = open_store(settings)
        finally:
            remount(disk, read_only=False)

        assert opened.store is None
        assert opened.release is not None and opened.release.release_version == "a"
        assert opened.problem is not None and "cannot be opened for writing" in opened.problem
        assert "the filesystem is mounted read-only" in opened.problem

        again = open_store(settings)  # writable again: the store opens as usual
        assert again.store is not None and again.problem is None
        assert again.release is not None and again.release.release_version == "a"
        again.store.close()
