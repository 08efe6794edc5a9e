"""Delta downloads against the simulated control plane: a changed artifact is rebuilt from
the device's own chunks plus range requests; every way a delta can go wrong (a tampered
chunk, a tampered manifest, no base on the device, a rebuild that hashes wrong, a server
without Range) falls back to the full download, and the device keeps serving meanwhile."""

from __future__ import annotations

import hashlib
import random

from edge_agent.updates import CycleResult
from protocol import TargetRef
from protocol.chunking import DEFAULT_PARAMS, chunk_bytes, delta_bytes, encode_manifest
from tests.agent_updates.conftest import Device, restart
from tests.agent_updates.simulator import ControlPlaneSimulator, Release, manifest_of

SIZE = 3 << 20


def model_bytes(seed: int = 7) -> bytes:
    return b"GGUF" + random.Random(seed).randbytes(SIZE - 4)


def edited(data: bytes, *regions: tuple[int, int]) -> bytes:
    """``data`` with each (offset, length) region rewritten."""
    out = bytearray(data)
    for offset, length in regions:
        out[offset : offset + length] = random.Random(offset).randbytes(length)
    return bytes(out)


def publish(
    sim: ControlPlaneSimulator, tag: str, data: bytes, *, chunks: bytes | None = None
) -> Release:
    target = sim.publish(
        f"model-{tag}", data, chunks=manifest_of(data) if chunks is None else chunks
    )
    return Release(id=f"rel-{tag}", name="demo", version=tag, targets=[target])


def installed(device: Device, sim: ControlPlaneSimulator, release: Release) -> None:
    sim.assign(device.device_id, release)
    outcome = device.cycle()
    assert outcome.result is CycleResult.INSTALLED, outcome
    assert device.serving_version() == release.version


def blob_bytes(device: Device, target: TargetRef) -> bytes:
    return device.store.blob_path(target.sha256).read_bytes()


def delta_requests(sim: ControlPlaneSimulator, since: int) -> list[tuple[str, str | None]]:
    return sim.target_requests[since:]


def test_a_changed_artifact_downloads_only_its_changed_chunks(device: Device) -> None:
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (200_000, 5_000), (2_000_000, 40_000))
    release = publish(sim, "1.2.0", new)
    before, requests = sim.streamed_bytes, len(sim.target_requests)
    installed(device, sim, release)
    pulled = sim.streamed_bytes - before
    assert blob_bytes(device, release.targets[0]) == new  # byte-identical to a full download
    assert pulled < SIZE // 8, pulled  # the two edited regions, their chunks and the manifest
    ranges = [r for _, r in delta_requests(sim, requests) if r is not None]
    assert ranges and all(r.count("-") == 1 and not r.endswith("-") for r in ranges)
    device.assert_store_holds_only_verified_releases()


def _key() -> str:
    from edge_agent.updates.delta import params_key
    from protocol.chunking import DEFAULT_PARAMS

    return params_key(DEFAULT_PARAMS)


def test_the_device_caches_the_chunk_lists_of_its_bases(device: Device) -> None:
    sim = device.sim
    old = model_bytes()
    first = publish(sim, "1.1.0", old)
    installed(device, sim, first)
    installed(device, sim, publish(sim, "1.2.0", edited(old, (100_000, 1000))))
    assert device.store.db.blob_chunks(first.targets[0].sha256, _key()) is not None


def test_without_the_delta_the_whole_artifact_is_downloaded(device: Device) -> None:
    """The peer of the test above: the same update with delta updates switched off."""
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    device.loop._downloader._delta = None  # what delta_updates=false composes
    before = sim.streamed_bytes
    installed(device, sim, publish(sim, "1.2.0", edited(old, (200_000, 5_000))))
    assert sim.streamed_bytes - before >= SIZE


def _falls_back(device: Device, release: Release, new: bytes) -> None:
    """The release installs from a full download (all its bytes pulled again)."""
    sim = device.sim
    before = sim.streamed_bytes
    installed(device, sim, release)
    assert sim.streamed_bytes - before >= SIZE
    assert blob_bytes(device, release.targets[0]) == new
    device.assert_store_holds_only_verified_releases()


def test_a_tampered_chunk_is_refused_and_the_full_download_used(device: Device) -> None:
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (1_000_000, 20_000))
    release = publish(sim, "1.2.0", new)
    sim.tamper_ranges = lambda body: body[:-1] + bytes([body[-1] ^ 1])  # a mirror flips a bit
    _falls_back(device, release, new)
    why = device.loop._downloader.last_delta[release.targets[0].name]
    assert isinstance(why, str) and "does not hash" in why


def test_a_tampered_manifest_is_refused_and_the_full_download_used(device: Device) -> None:
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (1_000_000, 20_000))
    release = publish(sim, "1.2.0", new)
    path = release.targets[0].path + ".chunks"
    honest = sim.blobs[path]
    sim.blobs[path] = honest[:-1] + bytes([honest[-1] ^ 1])  # the mirror alters it
    _falls_back(device, release, new)
    why = device.loop._downloader.last_delta[release.targets[0].name]
    assert isinstance(why, str) and "signed sha256" in why


def test_a_device_without_the_base_downloads_the_artifact_whole(device: Device) -> None:
    """The manifest was made against 1.1.0; this device runs 1.0.0, whose model shares
    nothing with it (fresh, or its blob was collected)."""
    sim = device.sim
    installed(device, sim, publish(sim, "1.0.0", model_bytes(seed=99)))
    old = model_bytes()
    sim.publish("model-1.1.0", old, chunks=manifest_of(old))  # the base, never on this device
    new = edited(old, (1_000_000, 20_000))
    release = publish(sim, "1.2.0", new)
    _falls_back(device, release, new)
    why = device.loop._downloader.last_delta[release.targets[0].name]
    assert isinstance(why, str) and "none of the new artifact's chunks" in why


def test_a_delta_that_rebuilds_to_the_wrong_hash_is_refused_and_the_full_download_used(
    device: Device,
) -> None:
    """A manifest (signed, internally consistent) whose chunks are the old artifact's: every
    chunk verifies and copies, but the rebuilt file is not the signed artifact."""
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (1_000_000, 20_000))
    lying = chunk_bytes(old)
    lying = type(lying)(hashlib.sha256(new).hexdigest(), len(new), lying.params, lying.chunks)
    release = publish(sim, "1.2.0", new, chunks=encode_manifest(lying))
    _falls_back(device, release, new)
    why = device.loop._downloader.last_delta[release.targets[0].name]
    assert isinstance(why, str) and "rebuilt artifact was refused" in why


def test_a_server_that_ignores_range_gets_the_full_download(device: Device) -> None:
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (1_000_000, 20_000))
    release = publish(sim, "1.2.0", new)
    sim.ignore_ranges = True
    _falls_back(device, release, new)
    why = device.loop._downloader.last_delta[release.targets[0].name]
    assert isinstance(why, str) and "ignores Range" in why


def test_a_delta_cut_off_resumes_chunk_by_chunk_and_serves_the_old_release_meanwhile(
    device: Device,
) -> None:
    sim = device.sim
    old = model_bytes()
    installed(device, sim, publish(sim, "1.1.0", old))
    new = edited(old, (300_000, 400_000), (2_000_000, 400_000))
    release = publish(sim, "1.2.0", new)
    sim.assign(device.device_id, release)
    sim.cut_targets_after = 150_000  # the link drops inside every range
    before = sim.streamed_bytes
    outcome = device.cycle()
    assert outcome.result is CycleResult.OFFLINE, outcome
    assert device.serving_version() == "1.1.0"
    part = device.store.partial_path(release.targets[0].sha256)
    assert 0 < part.stat().st_size < SIZE
    device = restart(device)  # and the agent restarts in between
    assert device.serving_version() == "1.1.0"
    sim.cut_targets_after = None
    assert device.cycle().result is CycleResult.INSTALLED
    assert blob_bytes(device, release.targets[0]) == new
    # the delta resumed after its last whole chunk: what was received before the cut is not
    # fetched again (at most the chunk it was cut inside, and the manifest a second time)
    needed = delta_bytes(chunk_bytes(new), [chunk_bytes(old)])
    manifest = len(manifest_of(new))
    assert sim.streamed_bytes - before <= needed + 2 * manifest + DEFAULT_PARAMS.max
    device.assert_store_holds_only_verified_releases()
    device.store.close()
