"""The release store: pointer flips, and recovery from every half-done journal state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.errors import TamperedArtifactError
from edge_agent.store import InstallRecord, InstallStep, ReleaseStore
from edge_agent.trust import SignedTarget
from protocol import Assignment
from tests.agent_updates.simulator import ControlPlaneSimulator, gguf_bytes, release_of


class Fleet:
    """Signs assignments for one device so the store can be driven step by step."""

    def __init__(self) -> None:
        self.sim = ControlPlaneSimulator()

    def begin(self, store: ReleaseStore, tag: str) -> InstallRecord:
        release = release_of(self.sim, tag)
        envelope = self.sim.sign_assignment("dev-1", release)
        assignment = Assignment.model_validate_json(envelope.payload_bytes())
        signed = {
            t.path: SignedTarget(t.path, t.sha256, t.length, {"kind": t.kind, "format": t.format})
            for t in assignment.targets
        }
        return store.begin_install(assignment, envelope, signed)

    def download(self, store: ReleaseStore, install: InstallRecord, tag: str) -> None:
        for t in install.manifest["assignment"]["targets"]:
            store.partial_path(t["sha256"]).write_bytes(gguf_bytes(tag))
            store.admit_partial(t["sha256"], t["length"])

    def install(self, store: ReleaseStore, tag: str) -> InstallRecord:
        record = self.begin(store, tag)
        self.download(store, record, tag)
        store.mark_verified(record)
        store.stage(record)
        store.activate(record)
        store.commit(record)
        return record


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture
def store(tmp_path: Path) -> ReleaseStore:
    s = ReleaseStore.open(tmp_path / "state")
    yield s  # type: ignore[misc]
    s.close()


def reopen(store: ReleaseStore) -> ReleaseStore:
    """What the agent sees after a power cut: a fresh process on the same directory."""
    store.close()
    return ReleaseStore.open(store.state_dir)


def versions(store: ReleaseStore) -> tuple[str | None, str | None]:
    return store.pointers()


def test_install_flips_current_and_keeps_previous(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    assert versions(store) == ("assignment-1", None)
    fleet.install(store, "b")
    assert versions(store) == ("assignment-2", "assignment-1")
    fleet.install(store, "c")
    assert versions(store) == ("assignment-3", "assignment-2")
    # the release before previous is gone, with its blob
    assert sorted(p.name for p in store.releases_dir.iterdir()) == [
        "assignment-2",
        "assignment-3",
    ]
    assert len(list(store.blobs_dir.iterdir())) == 2
    assert not list(store.state_dir.glob(".*.tmp"))
    current = store.current()
    assert current is not None and current.release_version == "c"
    assert current.artifacts[0].path.read_bytes() == gguf_bytes("c")


def test_blobs_are_read_only_and_named_by_hash(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    (blob,) = store.blobs_dir.iterdir()
    assert blob.stat().st_mode & 0o777 == 0o444
    assert store.verify_release("assignment-1").artifacts[0].sha256 == blob.name


def test_a_download_that_does_not_hash_right_never_enters_the_store(
    store: ReleaseStore, fleet: Fleet
) -> None:
    record = fleet.begin(store, "a")
    (target,) = record.manifest["assignment"]["targets"]
    store.partial_path(target["sha256"]).write_bytes(gguf_bytes("evil"))
    with pytest.raises(TamperedArtifactError):
        store.admit_partial(target["sha256"], target["length"])
    assert list(store.blobs_dir.iterdir()) == []
    assert list(store.downloads_dir.iterdir()) == []


def test_recovery_after_a_crash_mid_download_keeps_the_partial_for_resume(
    store: ReleaseStore, fleet: Fleet
) -> None:
    fleet.install(store, "a")
    record = fleet.begin(store, "b")
    (target,) = record.manifest["assignment"]["targets"]
    store.partial_path(target["sha256"]).write_bytes(gguf_bytes("b")[:1000])
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    assert recovery.interrupted is not None
    assert recovery.interrupted.step is InstallStep.DOWNLOADING
    assert store.partial_path(target["sha256"]).stat().st_size == 1000
    assert store.db.install(record.install_id).step is InstallStep.INTERRUPTED  # type: ignore[union-attr]
    store.close()


def test_recovery_after_a_crash_after_verify_keeps_the_verified_blob(
    store: ReleaseStore, fleet: Fleet
) -> None:
    fleet.install(store, "a")
    record = fleet.begin(store, "b")
    fleet.download(store, record, "b")
    store.mark_verified(record)
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    assert versions(store) == ("assignment-1", None)
    (target,) = record.manifest["assignment"]["targets"]
    assert store.has_blob(target["sha256"], target["length"])
    store.close()


def test_recovery_after_a_crash_once_staged_removes_the_staged_release(
    store: ReleaseStore, fleet: Fleet
) -> None:
    fleet.install(store, "a")
    record = fleet.begin(store, "b")
    fleet.download(store, record, "b")
    store.mark_verified(record)
    store.stage(record)
    assert (store.releases_dir / "assignment-2").is_dir()
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    assert not (store.releases_dir / "assignment-2").exists()
    store.close()


@pytest.mark.parametrize("flipped", ["previous only", "both pointers"])
def test_recovery_after_a_crash_mid_activate_restores_both_pointers(
    store: ReleaseStore, fleet: Fleet, flipped: str
) -> None:
    fleet.install(store, "a")
    fleet.install(store, "b")
    record = fleet.begin(store, "c")
    fleet.download(store, record, "c")
    store.mark_verified(record)
    store.stage(record)
    store.activate(record)
    if flipped == "previous only":  # the crash hit between the two renames
        store._write_pointer("current", "assignment-2")
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "b"
    assert versions(store) == ("assignment-2", "assignment-1")
    assert store.db.journal_steps(record.install_id)[-2:] == ["activating", "interrupted"]
    assert store.db.activation_attempts(3) == 1
    store.close()


def test_a_corrupted_current_blob_falls_back_to_previous(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    fleet.install(store, "b")
    blob = store.current().artifacts[0].path  # type: ignore[union-attr]
    os.chmod(blob, 0o644)
    with blob.open("r+b") as f:  # bit rot
        f.seek(100)
        f.write(b"\x00\x01\x02")
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    assert recovery.fell_back_from == 2
    assert versions(store) == ("assignment-1", None)
    assert not blob.exists()
    store.close()


def test_a_missing_current_release_falls_back_to_previous(
    store: ReleaseStore, fleet: Fleet
) -> None:
    fleet.install(store, "a")
    fleet.install(store, "b")
    (store.releases_dir / "assignment-2" / "manifest.json").unlink()
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    store.close()


def test_a_garbage_current_pointer_falls_back_to_previous(
    store: ReleaseStore, fleet: Fleet
) -> None:
    fleet.install(store, "a")
    fleet.install(store, "b")
    (store.state_dir / "current").write_text("../../etc/passwd\n")
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is not None and recovery.release.release_version == "a"
    store.close()


def test_nothing_verified_left_means_nothing_served(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    blob = store.current().artifacts[0].path  # type: ignore[union-attr]
    os.chmod(blob, 0o644)
    blob.write_bytes(b"truncated")
    store = reopen(store)
    recovery = store.recover()
    assert recovery.release is None
    assert versions(store) == (None, None)
    assert store.current() is None
    store.close()


def test_recovery_is_idempotent(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    record = fleet.begin(store, "b")
    fleet.download(store, record, "b")
    store.mark_verified(record)
    store.stage(record)
    store.activate(record)
    store = reopen(store)
    first = store.recover()
    second = store.recover()
    assert first.release == second.release
    assert second.interrupted is None and second.actions == ()
    store.close()


def test_leftover_temp_files_are_removed(store: ReleaseStore, fleet: Fleet) -> None:
    fleet.install(store, "a")
    (store.state_dir / ".current.tmp").write_text("assignment-9")
    (store.releases_dir / ".staging-assignment-9").mkdir()
    (store.downloads_dir / f"{'e' * 64}.part").write_bytes(b"stray")
    store = reopen(store)
    store.recover()
    assert not (store.state_dir / ".current.tmp").exists()
    assert [p.name for p in store.releases_dir.iterdir()] == ["assignment-1"]
    assert list(store.downloads_dir.iterdir()) == []
    store.close()


def test_atomic_write_never_follows_a_planted_temp_symlink(tmp_path: Path) -> None:
    from edge_agent.store.durable import write_atomically

    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    victim.chmod(0o644)
    target = tmp_path / "api-token"
    (tmp_path / ".api-token.tmp").symlink_to(victim)
    write_atomically(target, b"secret", mode=0o600)
    assert victim.read_bytes() == b"untouched"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert target.read_bytes() == b"secret"
    assert not target.is_symlink()
    assert target.stat().st_mode & 0o777 == 0o600
