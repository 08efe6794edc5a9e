"""One test per attack. Each proves that no byte of the bad release is admitted into the
store or handed to the runtime, and that the device keeps serving the release it had."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent.errors import UntrustedSignatureError
from edge_agent.store import sha256_file
from edge_agent.updates import CycleResult
from edge_agent.uplink import RootPin, enroll, new_http_client
from protocol import InstallState, generate_key_pair
from tests.agent_updates.conftest import HARDWARE, Device
from tests.agent_updates.simulator import (
    BASE_URL,
    ControlPlaneSimulator,
    Release,
    release_of,
)


@pytest.fixture
def serving_a(device: Device) -> Device:
    """A device that verified, installed and serves release "a"."""
    device.sim.assign(device.device_id, release_of(device.sim, "a"))
    assert device.cycle().result is CycleResult.INSTALLED
    assert device.serving_version() == "a"
    return device


def stored_file_hashes(device: Device) -> set[str]:
    """The sha256 of every file in ``blobs/`` and ``downloads/``, whatever its name."""
    return {
        sha256_file(path)
        for folder in (device.store.blobs_dir, device.store.downloads_dir)
        for path in folder.rglob("*")
        if path.is_file()
    }


def assert_refused(device: Device, error_type: str, bad: bytes | None = None) -> None:
    outcome = device.cycle()
    assert outcome.result is CycleResult.REFUSED, outcome
    assert outcome.error_type == error_type, outcome.detail
    assert device.serving_version() == "a"
    assert [r.release_version for r in device.activator.activated] == ["a"]
    current = device.store.current()
    assert current is not None and current.release_version == "a"
    device.assert_store_holds_only_verified_releases()
    if bad is not None:
        assert hashlib.sha256(bad).hexdigest() not in stored_file_hashes(device)
    refused = [r for r in device.sim.reports.values() if r.state is InstallState.REFUSED]
    assert len(refused) == 1, "the operator hears why, once"
    assert refused[0].detail
    assert device.cycle().result is CycleResult.REFUSED  # still refused on the next poll
    assert len([r for r in device.sim.reports.values() if r.state is InstallState.REFUSED]) == 1
    assert device.serving_version() == "a"


def test_tampered_artifact_is_never_admitted(serving_a: Device) -> None:
    sim = serving_a.sim
    release = release_of(sim, "b")
    good = sim.blobs[release.targets[0].path]
    evil = bytes([good[0] ^ 0xFF]) + good[1:]  # same length, different bytes
    sim.blobs[release.targets[0].path] = evil
    sim.assign(serving_a.device_id, release)
    assert_refused(serving_a, "TamperedArtifactError", evil)


def test_artifact_longer_than_its_signed_length_is_cut_off(serving_a: Device) -> None:
    """The server announces more than the signed length: not one byte is read or written."""
    sim = serving_a.sim
    release = release_of(sim, "b")
    path = release.targets[0].path
    sim.blobs[path] = sim.blobs[path] + b"\x00" * 10_000_000  # endless-data attack
    sim.assign(serving_a.device_id, release)
    partial = serving_a.store.partial_path(release.targets[0].sha256)
    on_disk: list[bool] = []
    sim.before_each_chunk = lambda: on_disk.append(partial.exists())
    pulled_before = len(sim.pulled)
    assert_refused(serving_a, "TamperedArtifactError", sim.blobs[path])
    assert sim.pulled[pulled_before:] == [0, 0]  # one GET per poll, its body never read
    assert on_disk == [] and not partial.exists()  # so nothing was written either
    assert list(serving_a.store.downloads_dir.iterdir()) == []


def test_artifact_longer_than_signed_without_content_length_is_cut_off(
    serving_a: Device,
) -> None:
    """Even when the server hides the size (no Content-Length), the bound holds."""
    sim = serving_a.sim
    release = release_of(sim, "b")
    path = release.targets[0].path
    signed_length = release.targets[0].length
    padded = sim.blobs[path] + b"X" * 50_000_000
    sim.blobs[path] = padded
    sim.hide_content_length = True
    sim.assign(serving_a.device_id, release)
    partial = serving_a.store.partial_path(release.targets[0].sha256)
    written: list[int] = []  # the partial file's size each time the device reads a chunk
    sim.before_each_chunk = lambda: written.append(
        partial.stat().st_size if partial.exists() else 0
    )
    pulled_before = len(sim.pulled)
    assert_refused(serving_a, "TamperedArtifactError", padded)
    # on both polls the device stopped reading within one chunk of the signed length...
    pulled = sim.pulled[pulled_before:]
    assert len(pulled) == 2
    assert all(signed_length < n <= signed_length + 8192 for n in pulled), pulled
    # ...and never wrote a byte past it (the partial file is gone afterwards)
    assert written and max(written) <= signed_length
    assert not partial.exists()


def test_replayed_older_assignment_is_a_rollback(serving_a: Device) -> None:
    sim = serving_a.sim
    old = sim.assignments[serving_a.device_id]
    sim.assign(serving_a.device_id, release_of(sim, "b"))
    assert serving_a.cycle().result is CycleResult.INSTALLED
    sim.assignments[serving_a.device_id] = old  # replay assignment version 1
    outcome = serving_a.cycle()
    assert outcome.result is CycleResult.REFUSED
    assert outcome.error_type == "RollbackAttackError"
    assert serving_a.serving_version() == "b"
    assert [r.release_version for r in serving_a.activator.activated] == ["a", "b"]
    serving_a.assert_store_holds_only_verified_releases()


def test_replay_is_refused_even_after_an_unfinished_newer_install(serving_a: Device) -> None:
    """The floor is the highest version ever accepted, not only the one installed."""
    sim = serving_a.sim
    release_b = release_of(sim, "b")
    sim.assign(serving_a.device_id, release_b)  # version 2, accepted...
    del sim.blobs[release_b.targets[0].path]  # ...but its download cannot finish
    assert serving_a.cycle().result is CycleResult.OFFLINE
    replay = sim.sign_assignment(serving_a.device_id, release_of(sim, "c"), version=1)
    sim.assignments[serving_a.device_id] = replay
    outcome = serving_a.cycle()
    assert outcome.error_type == "RollbackAttackError"
    assert serving_a.serving_version() == "a"


def test_expired_metadata_blocks_new_installs_but_not_serving(serving_a: Device) -> None:
    sim = serving_a.sim
    release = release_of(sim, "b")
    requests_before = len(sim.target_requests)
    sim.assign(serving_a.device_id, release)
    sim.expire_timestamp()
    assert_refused(serving_a, "ExpiredUpdateError", sim.blobs[release.targets[0].path])
    assert sim.target_requests[requests_before:] == []  # not one target was even requested


def test_expired_assignment_blocks_new_install(serving_a: Device) -> None:
    sim = serving_a.sim
    sim.assign(serving_a.device_id, release_of(sim, "b"), expires_in=timedelta(seconds=-1))
    assert_refused(serving_a, "ExpiredUpdateError")


def test_expired_assignment_of_the_installed_release_keeps_serving(serving_a: Device) -> None:
    """Expiry stops new installs only: re-reading the installed assignment is fine."""
    sim = serving_a.sim
    current = serving_a.store.current()
    assert current is not None
    release = Release(current.release_id, "demo", "a", [release_of(sim, "a").targets[0]])
    sim.assign(serving_a.device_id, release, version=1, expires_in=timedelta(seconds=-1))
    assert serving_a.cycle().result is CycleResult.UP_TO_DATE
    assert serving_a.serving_version() == "a"


def test_assignment_for_another_device_is_refused(serving_a: Device) -> None:
    sim = serving_a.sim
    other = sim.sign_assignment("dev-someone-else", release_of(sim, "b"), version=7)
    sim.assignments[serving_a.device_id] = other  # a valid envelope, but not ours
    assert_refused(serving_a, "WrongDeviceError")


def test_assignment_signed_by_an_unknown_key_is_refused(serving_a: Device) -> None:
    sim = serving_a.sim
    sim.assign(serving_a.device_id, release_of(sim, "b"), signer=generate_key_pair())
    assert_refused(serving_a, "UntrustedSignatureError")


def test_target_the_image_repository_never_signed_is_refused(serving_a: Device) -> None:
    """A stolen (online) director key alone cannot install software."""
    sim = serving_a.sim
    rogue = release_of(sim, "rogue", sign_in_repository=False)
    sim.assign(serving_a.device_id, rogue)  # correctly signed by the real director key
    assert_refused(serving_a, "UnsignedTargetError", sim.blobs[rogue.targets[0].path])
    assert all(path != rogue.targets[0].path for path, _ in sim.target_requests)


def test_target_signed_with_another_kind_is_refused(serving_a: Device) -> None:
    sim = serving_a.sim
    release = release_of(sim, "b")
    retyped = release.targets[0].model_copy(update={"kind": "embedding"})
    sim.assign(serving_a.device_id, Release("rel-b", "demo", "b", [retyped]))
    assert_refused(serving_a, "UnsignedTargetError")


def test_targets_metadata_signed_by_an_unknown_key_is_refused(serving_a: Device) -> None:
    sim = serving_a.sim
    sim.keys["targets"] = generate_key_pair()  # not the targets key the root names
    sim.assign(serving_a.device_id, release_of(sim, "b"))
    assert_refused(serving_a, "UntrustedSignatureError")


def test_enrollment_refuses_a_root_that_does_not_match_the_pin(tmp_path: Path) -> None:
    genuine = ControlPlaneSimulator()
    impostor = ControlPlaneSimulator()  # a server in the middle, with its own root
    with pytest.raises(UntrustedSignatureError, match="pinned"):
        enroll(
            new_http_client(BASE_URL, transport=impostor.transport),
            state_dir=tmp_path / "state",
            server_url=BASE_URL,
            token=impostor.enrollment_token(),
            pin=RootPin(sha256=genuine.root_sha256()),
            name="kiosk",
            tags=[],
            hardware=HARDWARE,
        )
    assert not (tmp_path / "state" / "device.key").exists()
    assert impostor.devices == {}


def test_planted_partial_download_symlink_is_never_written_through(
    serving_a: Device, tmp_path: Path
) -> None:
    """A link planted at downloads/<sha256>.part must not redirect the download's writes."""
    sim = serving_a.sim
    release = release_of(sim, "b")
    target = release.targets[0]
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch")
    serving_a.store.downloads_dir.mkdir(parents=True, exist_ok=True)
    serving_a.store.partial_path(target.sha256).symlink_to(victim)
    sim.assign(serving_a.device_id, release)
    serving_a.cycle()
    assert victim.read_bytes() == b"do not touch"
    assert serving_a.serving_version() == release.version
    serving_a.assert_store_holds_only_verified_releases()


@pytest.fixture
def stale_metadata(device: Device) -> dict[str, bytes]:
    """Genuine image-repository metadata files as signed before release "a" was published."""
    return dict(device.sim.files)


def newest_snapshot(files: dict[str, bytes]) -> str:
    """The name of the newest ``<version>.snapshot.json`` (consistent snapshots)."""
    return max((n for n in files if n.endswith(".snapshot.json")), key=lambda n: int(n[:-14]))


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_replayed_older_repository_metadata_is_a_rollback(
    stale_metadata: dict[str, bytes], serving_a: Device, role: str
) -> None:
    """A mirror that replays an older, genuinely signed timestamp (or snapshot) cannot hide
    newer targets or bring back older ones: the device has seen a higher version."""
    sim = serving_a.sim
    release = release_of(sim, "b")
    sim.assign(serving_a.device_id, release)
    if role == "timestamp":
        sim.files["timestamp.json"] = stale_metadata["timestamp.json"]
    else:  # the current timestamp names the newest snapshot; an older one is served for it
        sim.files[newest_snapshot(sim.files)] = stale_metadata[newest_snapshot(stale_metadata)]
    assert_refused(serving_a, "RollbackAttackError", sim.blobs[release.targets[0].path])


def test_target_whose_path_does_not_start_with_its_hash_is_refused(serving_a: Device) -> None:
    """Targets are content-addressed: a path under another hash is refused even when the
    image repository signed it with the right hash and length."""
    sim = serving_a.sim
    data = b"GGUF" + b"\x07" * 70_000
    elsewhere = hashlib.sha256(b"some other artifact").hexdigest()
    rogue = sim.publish("model-misfiled", data, path=f"{elsewhere}/model-misfiled.gguf")
    sim.assign(serving_a.device_id, Release("rel-misfiled", "demo", "misfiled", [rogue]))
    assert_refused(serving_a, "BadUpdateError", data)
    assert all(path != rogue.path for path, _ in sim.target_requests)
