"""The content-addressed release store with atomically flipped current/previous pointers.

Layout under the state directory::

    blobs/sha256/<hex>          verified artifact bytes, read-only, named by their hash
    downloads/<hex>.part        bytes still being downloaded (never loaded)
    releases/assignment-<N>/    one directory per installed release: manifest.json
    current, previous           pointer files naming a release directory
    state.db                    install journal, key-value state, status outbox

A blob only enters ``blobs/`` after its bytes hashed to the signed sha256 with the signed
length, so nothing outside ``downloads/`` is ever unverified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.errors import (
    StateDatabaseCorruptError,
    StoreError,
    StoreUnwritableError,
    TamperedArtifactError,
)
from edge_agent.release import InstalledArtifact, InstalledRelease
from edge_agent.store.durable import (
    free_bytes,
    fsync_dir,
    fsync_file,
    remove_durably,
    write_atomically,
)
from edge_agent.store.state_db import STORE_RUNBOOK, InstallRecord, InstallStep, StateDB
from edge_agent.trust import SignedTarget
from protocol import Assignment, SignedEnvelope

_RELEASE_DIR = re.compile(r"^assignment-[0-9]{1,18}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 1 << 20
MANIFEST_NAME = "manifest.json"
STATE_DB = "state.db"


class SignedTargetInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str
    length: int
    custom: dict[str, Any]


class ReleaseManifest(BaseModel):
    """What a release directory records: the verified assignment and its signed targets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_format: Literal[1] = 1
    assignment: Assignment
    envelope: SignedEnvelope
    signed_targets: dict[str, SignedTargetInfo]


@dataclass(frozen=True)
class Recovery:
    """What :meth:`ReleaseStore.recover` found and did; ``release`` is what to serve."""

    release: InstalledRelease | None
    actions: tuple[str, ...]
    interrupted: InstallRecord | None
    fell_back_from: int | None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def release_dir_name(assignment_version: int) -> str:
    return f"assignment-{assignment_version}"


def quarantine_state_db(path: Path, now: datetime) -> Path:
    """Move a corrupt state database (and its WAL files) aside; return the new name."""
    aside = path.with_name(f"{path.name}.corrupt-{now.strftime('%Y%m%dT%H%M%SZ')}")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = path.with_name(path.name + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        fsync_dir(path.parent)
    except OSError as e:
        raise StoreUnwritableError(
            f"state database {path} is corrupt and cannot be moved aside ({e}); see {STORE_RUNBOOK}"
        ) from e
    return aside


def resumable(*, have: int, length: int, free: int, margin: int) -> bool:
    """Whether a partial download of ``have`` of ``length`` signed bytes can be finished
    with ``free`` bytes free while keeping ``margin`` bytes free."""
    return 0 <= have <= length and length - have + margin <= free


class ReleaseFiles:
    """The verified files of one device's store, read without touching anything.

    :class:`ReleaseStore` adds everything that writes (and the state database). This part
    alone is what the agent serves from when ``state.db`` cannot be written at startup.
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.blobs_dir = state_dir / "blobs" / "sha256"
        self.downloads_dir = state_dir / "downloads"
        self.releases_dir = state_dir / "releases"

    # --- blobs --------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise StoreError(f"not a sha256: {sha256!r}")
        return self.blobs_dir / sha256

    def partial_path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise StoreError(f"not a sha256: {sha256!r}")
        return self.downloads_dir / f"{sha256}.part"

    def has_blob(self, sha256: str, length: int) -> bool:
        try:
            return self.blob_path(sha256).stat().st_size == length
        except FileNotFoundError:
            return False

    # --- pointers -----------------------------------------------------------------------

    def _read_pointer(self, name: Literal["current", "previous"]) -> str | None:
        try:
            value = (self.state_dir / name).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return value if _RELEASE_DIR.match(value) else None

    def pointers(self) -> tuple[str | None, str | None]:
        """The release directories named by ``current`` and ``previous``."""
        return self._read_pointer("current"), self._read_pointer("previous")

    # --- releases -----------------------------------------------------------------------

    def _manifest(self, release_dir: str) -> ReleaseManifest:
        path = self.releases_dir / release_dir / MANIFEST_NAME
        try:
            return ReleaseManifest.model_validate_json(path.read_bytes())
        except FileNotFoundError as e:
            raise StoreError(f"release {release_dir} has no manifest") from e
        except ValidationError as e:
            raise StoreError(f"release {release_dir} has an unreadable manifest") from e

    def _release(self, manifest: ReleaseManifest) -> InstalledRelease:
        a = manifest.assignment
        return InstalledRelease(
            release_id=a.release_id,
            release_name=a.release_name,
            release_version=a.release_version,
            assignment_version=a.version,
            artifacts=tuple(
                InstalledArtifact(
                    name=t.name,
                    kind=t.kind,
                    format=t.format,
                    sha256=t.sha256,
                    length=t.length,
                    path=self.blob_path(t.sha256),
                )
                for t in a.targets
            ),
            config=dict(a.config),
        )

    def release_of(self, release_dir: str) -> InstalledRelease:
        """The release a directory records (its blobs are not re-hashed here)."""
        return self._release(self._manifest(release_dir))

    def verify_release(self, release_dir: str) -> InstalledRelease:
        """Re-hash every blob of a release; raise :class:`StoreError` unless all match."""
        manifest = self._manifest(release_dir)
        for target in manifest.assignment.targets:
            blob = self.blob_path(target.sha256)
            if not self.has_blob(target.sha256, target.length):
                raise StoreError(f"release {release_dir}: blob of {target.name} is missing")
            if sha256_file(blob) != target.sha256:
                raise StoreError(f"release {release_dir}: blob of {target.name} is corrupted")
        return self._release(manifest)

    def current(self) -> InstalledRelease | None:
        """The release ``current`` names (its blobs were verified when admitted)."""
        name = self._read_pointer("current")
        if name is None:
            return None
        try:
            return self._release(self._manifest(name))
        except StoreError:
            return None

    def installed_version(self) -> int | None:
        release = self.current()
        return None if release is None else release.assignment_version

    def serveable_release(self, *, unproven: str | None = None) -> InstalledRelease | None:
        """The first of ``current`` and ``previous`` whose blobs all re-verify, skipping
        ``unproven`` (a release whose activation a crash interrupted); writes nothing."""
        for name in self.pointers():
            if name is None or name == unproven:
                continue
            try:
                return self.verify_release(name)
            except StoreError:
                continue
        return None


class ReleaseStore(ReleaseFiles):
    """Blobs, release directories, pointers and the install journal of one device."""

    def __init__(
        self, state_dir: Path, db: StateDB, *, clock: Callable[[], datetime] | None = None
    ) -> None:
        super().__init__(state_dir)
        self.db = db
        self._clock = clock or (lambda: datetime.now(UTC))
        self._opening_notes: list[str] = []
        for d in (self.blobs_dir, self.downloads_dir, self.releases_dir):
            d.mkdir(parents=True, exist_ok=True)

    @classmethod
    def open(cls, state_dir: Path, *, clock: Callable[[], datetime] | None = None) -> ReleaseStore:
        """Open (creating if needed) the store and its state database in ``state_dir``.

        A corrupt ``state.db`` is moved aside and a new one started (:meth:`recover` then
        rebuilds what it can from the verified releases on disk and says so in its
        actions). Raises :class:`StoreUnwritableError` if the database cannot be written.
        """
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / STATE_DB
        notes: list[str] = []
        try:
            db = StateDB(path)
        except StateDatabaseCorruptError as e:
            aside = quarantine_state_db(path, (clock or (lambda: datetime.now(UTC)))())
            notes.append(
                f"{e}; moved it aside to {aside.name} and started a new one (the install"
                " journal, queued reports and the highest assignment version seen are lost;"
                f" the releases on disk are re-verified; see {STORE_RUNBOOK})"
            )
            db = StateDB(path)
        store = cls(state_dir, db, clock=clock)
        store._opening_notes = notes
        return store

    def close(self) -> None:
        self.db.close()

    # --- writing blobs and pointers ------------------------------------------------------

    def discard_partial(self, sha256: str) -> None:
        remove_durably(self.partial_path(sha256))

    def admit_partial(self, sha256: str, length: int) -> Path:
        """Hash a completed download; move it into ``blobs/`` only if it matches.

        A mismatch deletes the partial file and raises :class:`TamperedArtifactError`.
        """
        part = self.partial_path(sha256)
        size = part.stat().st_size
        if size != length:
            self.discard_partial(sha256)
            raise TamperedArtifactError(
                f"artifact {sha256} has {size} bytes but {length} were signed; discarded"
            )
        actual = sha256_file(part)
        if actual != sha256:
            self.discard_partial(sha256)
            raise TamperedArtifactError(
                f"artifact bytes hash to {actual}, but {sha256} was signed; the download was"
                " discarded and nothing was installed"
            )
        fsync_file(part)
        os.chmod(part, 0o444)
        blob = self.blob_path(sha256)
        os.replace(part, blob)
        fsync_dir(self.blobs_dir)
        fsync_dir(self.downloads_dir)
        return blob

    def _write_pointer(self, name: Literal["current", "previous"], value: str | None) -> None:
        if value is None:
            remove_durably(self.state_dir / name)
        else:
            write_atomically(self.state_dir / name, f"{value}\n".encode())

    # --- installing ---------------------------------------------------------------------

    def begin_install(
        self,
        assignment: Assignment,
        envelope: SignedEnvelope,
        signed_targets: Mapping[str, SignedTarget],
    ) -> InstallRecord:
        """Journal the start of an install (or resume the unfinished one for this version)."""
        manifest = ReleaseManifest(
            assignment=assignment,
            envelope=envelope,
            signed_targets={
                path: SignedTargetInfo(sha256=t.sha256, length=t.length, custom=dict(t.custom))
                for path, t in signed_targets.items()
            },
        )
        return self.db.begin_install(
            assignment_version=assignment.version,
            release_id=assignment.release_id,
            release_dir=release_dir_name(assignment.version),
            manifest=manifest.model_dump(mode="json"),
            now=self._clock(),
        )

    def _install_manifest(self, install: InstallRecord) -> ReleaseManifest:
        return ReleaseManifest.model_validate(install.manifest)

    def mark_verified(self, install: InstallRecord) -> None:
        """Every target's blob is in the store (hence verified)."""
        for t in self._install_manifest(install).assignment.targets:
            if not self.has_blob(t.sha256, t.length):
                raise StoreError(f"cannot mark verified: blob of {t.name} is not in the store")
        self.db.set_step(install.install_id, InstallStep.VERIFIED, self._clock())

    def stage(self, install: InstallRecord) -> None:
        """Write the release directory (manifest) durably; idempotent."""
        name = install.release_dir
        if name in self.pointers():
            raise StoreError(f"release {name} is already current or previous")
        manifest = self._install_manifest(install)
        staging = self.releases_dir / f".staging-{name}"
        final = self.releases_dir / name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write_atomically(staging / MANIFEST_NAME, manifest.model_dump_json(indent=2).encode())
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_dir(self.releases_dir)
        self.db.set_step(install.install_id, InstallStep.STAGED, self._clock())

    def activate(self, install: InstallRecord, *, keep_previous: bool = False) -> InstalledRelease:
        """Flip the pointers to the staged release: previous := current, current := new.

        ``keep_previous`` is for a renewal (a re-signed assignment of the same content):
        the rollback target stays the release before it.
        """
        name = install.release_dir
        release = self._release(self._manifest(name))
        prior_current, prior_previous = self.pointers()
        self.db.set_step(
            install.install_id,
            InstallStep.ACTIVATING,
            self._clock(),
            prior_pointers=(prior_current, prior_previous),
        )
        if prior_current is not None and prior_current != name and not keep_previous:
            self._write_pointer("previous", prior_current)
        self._write_pointer("current", name)
        return release

    def begin_health_check(self, install: InstallRecord) -> None:
        """The runtime serves the new release; its health window starts. Until
        :meth:`commit`, recovery treats the install as unfinished and restores the pointers."""
        self.db.set_step(install.install_id, InstallStep.HEALTH_CHECK, self._clock())

    def commit(self, install: InstallRecord) -> None:
        """The new release passed its health window: the install is done; drop what is
        unused."""
        self.db.set_step(install.install_id, InstallStep.ACTIVE, self._clock())
        self.collect_garbage()

    def abort_activation(self, install: InstallRecord, reason: str) -> InstalledRelease | None:
        """Put the pointers back as they were before :meth:`activate` (a failed activation
        or health window); journal FAILED; return what ``current`` names now."""
        record = self.db.install(install.install_id) or install
        self._write_pointer("previous", record.prior_previous)
        self._write_pointer("current", record.prior_current)
        self.db.set_step(install.install_id, InstallStep.FAILED, self._clock(), reason)
        return self.current()

    def fail(self, install: InstallRecord, reason: str) -> None:
        """Give up on an install that never reached activation."""
        self.db.set_step(install.install_id, InstallStep.FAILED, self._clock(), reason)
        self.collect_garbage()

    def roll_back(self) -> InstalledRelease | None:
        """Make ``previous`` current again (after it re-verifies); None if impossible."""
        _, previous = self.pointers()
        if previous is None:
            return None
        try:
            release = self.verify_release(previous)
        except StoreError:
            return None
        self._write_pointer("current", previous)
        self._write_pointer("previous", None)
        return release

    # --- recovery -----------------------------------------------------------------------

    def recover(self, *, free_space_margin: int = 0) -> Recovery:
        """Bring the store to a consistent state after any crash; say what to serve.

        First, before anything is written, partial downloads that cannot be resumed are
        deleted: those of no unfinished install, and those whose missing bytes plus
        ``free_space_margin`` do not fit the free space (a download that filled the disk).
        An unfinished install is undone (pointers restored if activation had started, its
        health window included) and
        journaled INTERRUPTED; its verified blobs and resumable partial downloads stay so
        that a retry resumes. ``current`` is re-hashed; if it is missing or corrupt,
        ``previous`` (re-hashed too) takes its place. Everything else unreferenced is
        removed. Raises :class:`StoreUnwritableError` if the journal cannot be written.
        """
        actions: list[str] = list(self._opening_notes)
        self._opening_notes = []
        now = self._clock()
        interrupted = self.db.unfinished_install()
        actions += self._discard_unresumable_partials(interrupted, free_space_margin)
        keep_hashes: set[str] = set()
        if interrupted is not None:
            if interrupted.step in (InstallStep.ACTIVATING, InstallStep.HEALTH_CHECK):
                self._write_pointer("previous", interrupted.prior_previous)
                self._write_pointer("current", interrupted.prior_current)
                what = (
                    "activation"
                    if interrupted.step is InstallStep.ACTIVATING
                    else "the health window"
                )
                actions.append(
                    f"{what} of assignment {interrupted.assignment_version} was interrupted;"
                    f" pointers restored (current={interrupted.prior_current})"
                )
            else:
                actions.append(
                    f"install of assignment {interrupted.assignment_version} was interrupted at"
                    f" step {interrupted.step.value}; it will be retried"
                )
            self.db.set_step(
                interrupted.install_id,
                InstallStep.INTERRUPTED,
                now,
                f"interrupted at {interrupted.step.value}",
            )
            keep_hashes = {t.sha256 for t in self._install_manifest(interrupted).assignment.targets}

        release: InstalledRelease | None = None
        fell_back_from: int | None = None
        current, previous = self.pointers()
        if current is not None:
            try:
                release = self.verify_release(current)
            except StoreError as e:
                actions.append(f"current release {current} failed verification: {e}")
                fell_back_from = _version_of(current)
                release = None
        elif (self.state_dir / "current").exists():
            actions.append("the current pointer is unreadable")
        if release is None and previous is not None:
            try:
                release = self.verify_release(previous)
                self._write_pointer("current", previous)
                self._write_pointer("previous", None)
                actions.append(f"fell back to previous release {previous}")
            except StoreError as e:
                actions.append(f"previous release {previous} failed verification too: {e}")
        if release is None and current is not None:
            self._write_pointer("current", None)
            self._write_pointer("previous", None)
            actions.append("no verified release is left; the device waits for an install")
        self.collect_garbage(keep_hashes=keep_hashes)
        return Recovery(
            release=release,
            actions=tuple(actions),
            interrupted=interrupted,
            fell_back_from=fell_back_from,
        )

    def _discard_unresumable_partials(
        self, unfinished: InstallRecord | None, margin: int
    ) -> list[str]:
        lengths = (
            {t.sha256: t.length for t in self._install_manifest(unfinished).assignment.targets}
            if unfinished is not None
            else {}
        )
        actions: list[str] = []
        for entry in sorted(self.downloads_dir.iterdir()):
            sha256 = entry.name.removesuffix(".part")
            length = lengths.get(sha256)
            if length is None or entry.is_symlink() or not entry.is_file():
                _remove_entry(entry)
                continue
            have = entry.stat().st_size
            free = free_bytes(self.downloads_dir)
            if not resumable(have=have, length=length, free=free, margin=margin):
                _remove_entry(entry)
                actions.append(
                    f"deleted the partial download {entry.name} ({have} of {length} bytes):"
                    f" it cannot be finished here ({length - have} bytes to go and"
                    f" {margin} to keep free, {free} free); it will be downloaded again"
                )
        if actions:
            fsync_dir(self.downloads_dir)
        return actions

    def collect_garbage(self, *, keep_hashes: Iterable[str] = ()) -> None:
        """Remove releases, blobs and partial files that nothing refers to any more."""
        keep_dirs = {p for p in self.pointers() if p is not None}
        unfinished = self.db.unfinished_install()
        keep = set(keep_hashes)
        if unfinished is not None:
            keep_dirs.add(unfinished.release_dir)
            keep |= {t.sha256 for t in self._install_manifest(unfinished).assignment.targets}
        for name in keep_dirs:
            with contextlib.suppress(StoreError):
                keep |= {t.sha256 for t in self._manifest(name).assignment.targets}
        for entry in self.releases_dir.iterdir():
            if entry.name not in keep_dirs:
                shutil.rmtree(entry, ignore_errors=True)
        for blob in self.blobs_dir.iterdir():
            if blob.name not in keep:
                blob.unlink(missing_ok=True)
        for part in self.downloads_dir.iterdir():
            if part.name.removesuffix(".part") not in keep:
                part.unlink(missing_ok=True)
        with contextlib.suppress(StoreUnwritableError):  # a cache: retried at the next collection
            self.db.prune_blob_chunks(keep)
        for tmp in self.state_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for d in (self.releases_dir, self.blobs_dir, self.downloads_dir):
            fsync_dir(d)


def _remove_entry(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)


def _version_of(release_dir: str) -> int:
    return int(release_dir.removeprefix("assignment-"))
