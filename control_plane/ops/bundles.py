"""``outpost-cp bundle create``: one file that installs a release on an air-gapped device.

Run on the control plane's machine (it signs with the online snapshot, timestamp and
director keys, like ``rotate-key``). The bundle (format: :mod:`protocol.bundle`,
docs/packaging.md) holds the image repository's root chain and targets metadata as
published, a snapshot and a timestamp re-signed to live as long as the bundle, an
assignment of the release signed by the director for one device class (or one device),
the release's artifacts, optional agent wheels, a CycloneDX SBOM and a license
inventory, and a director-signed manifest of all of it.

Expiry: the bundle lives ``lifetime`` (default 180 days) but never past the targets or
root metadata it carries; past it a device refuses new installs from it and keeps
serving what it installed. Versions: the assignment's version is the creation time in
seconds, so a device refuses an older bundle after a newer one (a replay).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from tuf.api.metadata import Metadata, MetaFile, Snapshot, Timestamp
from tuf.api.serialization.json import JSONSerializer

from control_plane import audit
from control_plane.artifacts.blob_store import BlobStore
from control_plane.director.assignment import build_assignment, sign_assignment
from control_plane.director.service import release_facts
from control_plane.errors import ConflictError, InvalidRequestError
from control_plane.ops.bundle_inventory import (
    UNKNOWN_LICENSE,
    LicensePolicy,
    check_licenses,
    cyclonedx_sbom,
    inventory,
    read_wheel,
)
from control_plane.releases.service import get_release_by_ref
from control_plane.releases.state import ReleaseState
from control_plane.repository import tuf_signer
from control_plane.repository.keyring import Keyring
from control_plane.repository.metadata_store import load_repository, read_file
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database
from protocol.bundle import (
    ASSIGNMENT_FILE,
    BUNDLE_MANIFEST_PAYLOAD_TYPE,
    BUNDLE_ROOT,
    LICENSES_FILE,
    MANIFEST_FILE,
    METADATA_DIR,
    SBOM_FILE,
    TARGETS_DIR,
    WHEELS_DIR,
    BundleFile,
    BundleManifest,
    LicenseInventory,
    device_class_binding,
)
from protocol.envelope import sign_envelope

BUNDLE_ACTOR = "outpost-cp bundle create"
DEFAULT_LIFETIME = timedelta(days=180)
# Shorter than this left on the metadata and the bundle is not worth carrying to a kiosk.
MIN_LIFETIME = timedelta(days=1)
DEFAULT_ALLOWLIST = Path(__file__).resolve().parents[2] / "packaging" / "license-allowlist.json"
_SERIALIZER = JSONSerializer(compact=False)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BundleRequest:
    """What to bundle. ``device_class`` or ``device_id`` (exactly one) binds it."""

    release: str
    out: Path
    device_class: str | None = None
    device_id: str | None = None
    lifetime: timedelta = DEFAULT_LIFETIME
    agent_wheels: Path | None = None
    model_licenses: Mapping[str, str] = field(default_factory=dict)
    allowlist: Path = DEFAULT_ALLOWLIST

    def binding(self) -> str:
        if (self.device_class is None) == (self.device_id is None):
            raise InvalidRequestError("bind the bundle to one --device-class or one --device")
        if self.device_id is not None:
            return self.device_id
        assert self.device_class is not None
        try:
            return device_class_binding(self.device_class)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e


@dataclass(frozen=True)
class CreatedBundle:
    path: Path
    sha256: str
    size: int
    release: str
    bound_to: str
    assignment_version: int
    expires_at: datetime
    root_sha256: str
    members: int

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "bytes": self.size,
            "release": self.release,
            "bound_to": self.bound_to,
            "assignment_version": self.assignment_version,
            "expires_at": self.expires_at.isoformat(),
            "root_sha256": self.root_sha256,
            "members": self.members,
        }


@dataclass
class _Member:
    path: str  # relative to BUNDLE_ROOT
    data: bytes | None = None
    source: Path | None = None
    sha256: str = ""
    length: int = 0


def _bytes_member(path: str, data: bytes) -> _Member:
    return _Member(path, data=data, sha256=hashlib.sha256(data).hexdigest(), length=len(data))


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_member(path: str, source: Path) -> _Member:
    return _Member(path, source=source, sha256=_sha256_of(source), length=source.stat().st_size)


def _offline_copies(
    snapshot: Metadata[Snapshot],
    timestamp: Metadata[Timestamp],
    *,
    expires: datetime,
    snapshot_key: Any,
    timestamp_key: Any,
) -> tuple[bytes, bytes]:
    """The current snapshot and timestamp, same versions, re-signed to expire with the
    bundle. They exist only inside bundles: the repository keeps serving its own."""
    snap = Metadata[Snapshot].from_bytes(snapshot.to_bytes(_SERIALIZER))
    snap.signed.expires = expires
    snap.signatures.clear()
    snap.sign(tuf_signer(snapshot_key))
    ts = Metadata[Timestamp].from_bytes(timestamp.to_bytes(_SERIALIZER))
    ts.signed.expires = expires
    ts.signed.snapshot_meta = MetaFile(version=snap.signed.version)
    ts.signatures.clear()
    ts.sign(tuf_signer(timestamp_key))
    return snap.to_bytes(_SERIALIZER), ts.to_bytes(_SERIALIZER)


def create_bundle(
    settings: ControlPlaneSettings, request: BundleRequest, *, now: datetime
) -> CreatedBundle:
    """Write the bundle to ``request.out`` (atomically) and audit it."""
    binding = request.binding()
    if request.lifetime < MIN_LIFETIME:
        raise InvalidRequestError(f"a bundle must live at least {MIN_LIFETIME}")
    policy = LicensePolicy.from_file(request.allowlist)
    wheels = []
    if request.agent_wheels is not None:
        found = sorted(request.agent_wheels.glob("*.whl"))
        if not found:
            raise InvalidRequestError(f"no wheels in {request.agent_wheels}")
        wheels = [read_wheel(p, policy) for p in found]
    keys = Keyring(
        offline_dir=settings.resolved_offline_keys_dir, online_dir=settings.online_keys_dir
    ).load_online()
    blobs = BlobStore(settings.blobs_dir)
    db = Database.from_url(settings.resolved_database_url)
    try:
        with db.transaction() as session:
            release = get_release_by_ref(session, request.release)
            label = f"{release.name}@{release.version}"
            if release.state != ReleaseState.PUBLISHED:
                raise ConflictError(
                    f"release {label} awaits the signature of its targets"
                    " ('outpost-cp sign-targets'); bundle it once signed"
                )
            facts = release_facts(release)
            repo = load_repository(session, settings.lifetimes)
            for target in facts.targets:
                signed = repo.target(target.path)
                if signed is None or signed.hashes.get("sha256") != target.sha256:
                    raise ConflictError(
                        f"{target.path} of {label} is not in the signed targets metadata;"
                        " run 'outpost-cp sign-targets' first"
                    )
            expires = min(
                (now + request.lifetime).replace(microsecond=0),
                repo.targets.signed.expires,
                repo.root.signed.expires,
            )
            if expires - now < MIN_LIFETIME:
                raise ConflictError(
                    f"the repository's targets or root metadata expires at {expires.isoformat()}:"
                    " re-sign it ('outpost-cp sign-targets' / a root rotation) before bundling"
                )
            root_version = repo.root.signed.version
            roots = {}
            for version in range(1, root_version + 1):
                content = read_file(session, f"{version}.root.json")
                if content is None:
                    raise ConflictError(f"root version {version} is missing from the database")
                roots[version] = content
            targets_file = f"{repo.targets.signed.version}.targets.json"
            targets_bytes = read_file(session, targets_file)
            if targets_bytes is None:
                raise ConflictError(f"{targets_file} is missing from the database")
            snapshot_bytes, timestamp_bytes = _offline_copies(
                repo.snapshot,
                repo.timestamp,
                expires=expires,
                snapshot_key=keys.snapshot,
                timestamp_key=keys.timestamp,
            )
            assignment = build_assignment(
                device_id=binding,
                version=int(now.timestamp()),
                release=facts,
                now=now,
                ttl=expires - now.replace(microsecond=0),
            )
            models = [
                (
                    m.artifact.name,
                    release.version,
                    request.model_licenses.get(m.artifact.name)
                    or str(m.artifact.custom.get("license") or UNKNOWN_LICENSE),
                    m.artifact.sha256,
                )
                for m in release.members
            ]
            entries = inventory([(n, v, lic) for n, v, lic, _ in models], wheels)
            check_licenses(entries, policy, where=request.allowlist)

            members = [
                *(
                    _bytes_member(f"{METADATA_DIR}/{v}.root.json", content)
                    for v, content in roots.items()
                ),
                _bytes_member(f"{METADATA_DIR}/{targets_file}", targets_bytes),
                _bytes_member(
                    f"{METADATA_DIR}/{repo.snapshot.signed.version}.snapshot.json",
                    snapshot_bytes,
                ),
                _bytes_member(f"{METADATA_DIR}/timestamp.json", timestamp_bytes),
                _bytes_member(
                    ASSIGNMENT_FILE,
                    sign_assignment(assignment, keys.director).model_dump_json().encode(),
                ),
            ]
            members += [
                _file_member(f"{TARGETS_DIR}/{t.path}", blobs.path(t.sha256)) for t in facts.targets
            ]
            for target, member in zip(facts.targets, members[-len(facts.targets) :], strict=True):
                if member.sha256 != target.sha256:
                    raise ConflictError(
                        f"the stored blob of {target.name} does not match its sha256;"
                        " restore the blob store from a backup (docs/runbooks/cp-backup-restore.md)"
                    )
            wheel_members = [_file_member(f"{WHEELS_DIR}/{w.path.name}", w.path) for w in wheels]
            members += wheel_members
            sbom = cyclonedx_sbom(
                release=release.name,
                release_version=release.version,
                models=models,
                wheels=[(w, m.sha256) for w, m in zip(wheels, wheel_members, strict=True)],
                serial=f"urn:uuid:{uuid.uuid4()}",
                now=now,
            )
            members.append(_bytes_member(SBOM_FILE, json.dumps(sbom, indent=2).encode()))
            members.append(
                _bytes_member(
                    LICENSES_FILE,
                    LicenseInventory(entries=entries).model_dump_json(indent=2).encode(),
                )
            )
            root_sha256 = hashlib.sha256(roots[1]).hexdigest()
            manifest = BundleManifest(
                device_id=binding,
                release_id=release.id,
                release_name=release.name,
                release_version=release.version,
                assignment_version=assignment.version,
                root_sha256=root_sha256,
                created_at=now.replace(microsecond=0),
                expires_at=expires,
                files=[BundleFile(path=m.path, sha256=m.sha256, length=m.length) for m in members],
            )
            envelope = sign_envelope(
                BUNDLE_MANIFEST_PAYLOAD_TYPE, manifest.model_dump(mode="json"), [keys.director]
            )
            manifest_member = _bytes_member(MANIFEST_FILE, envelope.model_dump_json().encode())
            sha256, size = _write_tar(request.out, [manifest_member, *members], now)
            audit.record(
                session,
                actor=BUNDLE_ACTOR,
                action="bundle.create",
                target=release.id,
                now=now,
                details={
                    "release": label,
                    "bound_to": binding,
                    "assignment_version": assignment.version,
                    "expires_at": expires.isoformat(),
                    "sha256": sha256,
                },
            )
    finally:
        db.dispose()
    return CreatedBundle(
        path=request.out,
        sha256=sha256,
        size=size,
        release=label,
        bound_to=binding,
        assignment_version=assignment.version,
        expires_at=expires,
        root_sha256=root_sha256,
        members=len(members) + 1,
    )


@contextmanager
def _member_stream(member: _Member) -> Iterator[IO[bytes]]:
    if member.data is not None:
        yield io.BytesIO(member.data)
    else:
        assert member.source is not None
        with member.source.open("rb") as f:
            yield f


def _write_tar(out: Path, members: list[_Member], now: datetime) -> tuple[str, int]:
    """An uncompressed POSIX tar (models are compressed already); its sha256 and size."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with part.open("wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(f"{BUNDLE_ROOT}/{member.path}")
            info.size = member.length
            info.mode = 0o644
            info.mtime = int(now.timestamp())
            with _member_stream(member) as stream:
                tar.addfile(info, stream)
    with part.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(part, out)
    return _sha256_of(out), out.stat().st_size
