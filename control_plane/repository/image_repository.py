"""Pure TUF image-repository logic over python-tuf's Metadata API.

Values in, values out: no files, no database, time passed in. The caller stores the
returned metadata files (name -> bytes) and serves them under ``/repo/metadata/``.
Consistent snapshots are on, so every version of root, targets and snapshot keeps its
own file name (``N.root.json``) and only ``timestamp.json`` is overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import CryptoSigner, SSlibKey
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from protocol.keys import Ed25519KeyPair, public_key_hex
from protocol.messages import DIRECTOR_ROOT_FIELD

MetadataFiles = dict[str, bytes]
_SERIALIZER = JSONSerializer(compact=False)


def sslib_key(public: Ed25519PublicKey) -> SSlibKey:
    """The TUF key object for an Ed25519 public key."""
    return SSlibKey.from_crypto(public, scheme="ed25519")


def tuf_signer(pair: Ed25519KeyPair) -> CryptoSigner:
    return CryptoSigner(pair.private, sslib_key(pair.public))


@dataclass(frozen=True)
class RoleKeys:
    """Public keys of each role, as root lists them."""

    root: Ed25519PublicKey
    targets: Ed25519PublicKey
    snapshot: Ed25519PublicKey
    timestamp: Ed25519PublicKey
    director: Ed25519PublicKey


@dataclass(frozen=True)
class RepositoryLifetimes:
    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=30)
    timestamp: timedelta = timedelta(days=1)


def director_root_field(director: Ed25519PublicKey) -> dict[str, Any]:
    """The root metadata field that pins the director key (see DIRECTOR_ROOT_FIELD)."""
    key = sslib_key(director)
    return {
        DIRECTOR_ROOT_FIELD: {
            "threshold": 1,
            "keys": {key.keyid: {"keytype": "ed25519", "public": public_key_hex(director)}},
        }
    }


def _expiry(now: datetime, lifetime: timedelta) -> datetime:
    return (now + lifetime).replace(microsecond=0)


class ImageRepository:
    """The four top-level roles of the image repository, and how they change."""

    def __init__(
        self,
        root: Metadata[Root],
        targets: Metadata[Targets],
        snapshot: Metadata[Snapshot],
        timestamp: Metadata[Timestamp],
        lifetimes: RepositoryLifetimes,
    ) -> None:
        self.root = root
        self.targets = targets
        self.snapshot = snapshot
        self.timestamp = timestamp
        self.lifetimes = lifetimes

    # --- construction -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        keys: RoleKeys,
        *,
        root_signer: CryptoSigner,
        targets_signer: CryptoSigner,
        snapshot_signer: CryptoSigner,
        timestamp_signer: CryptoSigner,
        now: datetime,
        lifetimes: RepositoryLifetimes | None = None,
    ) -> tuple[ImageRepository, MetadataFiles]:
        """A fresh repository with version-1 metadata for every role, all signed."""
        life = lifetimes or RepositoryLifetimes()
        root_md = Metadata(
            Root(
                expires=_expiry(now, life.root),
                consistent_snapshot=True,
                unrecognized_fields=director_root_field(keys.director),
            )
        )
        for role, public in (
            ("root", keys.root),
            ("targets", keys.targets),
            ("snapshot", keys.snapshot),
            ("timestamp", keys.timestamp),
        ):
            root_md.signed.add_key(sslib_key(public), role)
        root_md.sign(root_signer)
        targets_md = Metadata(Targets(expires=_expiry(now, life.targets)))
        targets_md.sign(targets_signer)
        snapshot_md = Metadata(Snapshot(expires=_expiry(now, life.snapshot)))
        snapshot_md.sign(snapshot_signer)
        timestamp_md = Metadata(Timestamp(expires=_expiry(now, life.timestamp)))
        timestamp_md.sign(timestamp_signer)
        repo = cls(root_md, targets_md, snapshot_md, timestamp_md, life)
        return repo, repo.all_files()

    @classmethod
    def from_files(
        cls,
        *,
        root: bytes,
        targets: bytes,
        snapshot: bytes,
        timestamp: bytes,
        lifetimes: RepositoryLifetimes | None = None,
    ) -> ImageRepository:
        """Rebuild from the latest stored file of each role."""
        return cls(
            Metadata[Root].from_bytes(root),
            Metadata[Targets].from_bytes(targets),
            Metadata[Snapshot].from_bytes(snapshot),
            Metadata[Timestamp].from_bytes(timestamp),
            lifetimes or RepositoryLifetimes(),
        )

    # --- reads ----------------------------------------------------------------------

    def all_files(self) -> MetadataFiles:
        """The current file of each role, under its consistent-snapshot name."""
        return {
            f"{self.root.signed.version}.root.json": self.root.to_bytes(_SERIALIZER),
            f"{self.targets.signed.version}.targets.json": self.targets.to_bytes(_SERIALIZER),
            f"{self.snapshot.signed.version}.snapshot.json": self.snapshot.to_bytes(_SERIALIZER),
            "timestamp.json": self.timestamp.to_bytes(_SERIALIZER),
        }

    def target(self, path: str) -> TargetFile | None:
        return self.targets.signed.targets.get(path)

    def director_keys(self) -> Mapping[str, Any]:
        field: Mapping[str, Any] = self.root.signed.unrecognized_fields[DIRECTOR_ROOT_FIELD]
        return field

    def timestamp_expires_within(self, now: datetime, margin: timedelta) -> bool:
        return self.timestamp.signed.expires - margin <= now

    # --- changes --------------------------------------------------------------------

    @staticmethod
    def target_file(path: str, sha256: str, length: int, custom: Mapping[str, Any]) -> TargetFile:
        """A target entry for an artifact already hashed by the caller."""
        return TargetFile(
            length=length,
            hashes={"sha256": sha256},
            path=path,
            unrecognized_fields={"custom": dict(custom)},
        )

    def add_targets(
        self,
        new_targets: Iterable[TargetFile],
        *,
        targets_signer: CryptoSigner,
        snapshot_signer: CryptoSigner,
        timestamp_signer: CryptoSigner,
        now: datetime,
    ) -> MetadataFiles:
        """Sign a new targets version listing ``new_targets`` too; return the new files."""
        signed = self.targets.signed
        for target in new_targets:
            signed.targets[target.path] = target
        signed.version += 1
        signed.expires = _expiry(now, self.lifetimes.targets)
        self.targets.signatures.clear()
        self.targets.sign(targets_signer)
        return {
            f"{signed.version}.targets.json": self.targets.to_bytes(_SERIALIZER),
            **self._new_snapshot(snapshot_signer, timestamp_signer, now),
        }

    def install_targets(
        self,
        targets: Metadata[Targets],
        *,
        snapshot_signer: CryptoSigner,
        timestamp_signer: CryptoSigner,
        now: datetime,
    ) -> MetadataFiles:
        """Adopt targets metadata signed elsewhere (checked by the caller); return new files."""
        self.targets = targets
        return {
            f"{targets.signed.version}.targets.json": targets.to_bytes(_SERIALIZER),
            **self._new_snapshot(snapshot_signer, timestamp_signer, now),
        }

    def _new_snapshot(
        self, snapshot_signer: CryptoSigner, timestamp_signer: CryptoSigner, now: datetime
    ) -> MetadataFiles:
        snap = self.snapshot.signed
        snap.meta["targets.json"] = MetaFile(version=self.targets.signed.version)
        snap.version += 1
        snap.expires = _expiry(now, self.lifetimes.snapshot)
        self.snapshot.signatures.clear()
        self.snapshot.sign(snapshot_signer)
        return {
            f"{snap.version}.snapshot.json": self.snapshot.to_bytes(_SERIALIZER),
            **self.refresh_timestamp(timestamp_signer, now),
        }

    def refresh_snapshot(
        self, snapshot_signer: CryptoSigner, timestamp_signer: CryptoSigner, now: datetime
    ) -> MetadataFiles:
        """Re-sign snapshot (new version, new expiry) and a timestamp pointing at it."""
        return self._new_snapshot(snapshot_signer, timestamp_signer, now)

    def refresh_timestamp(self, timestamp_signer: CryptoSigner, now: datetime) -> MetadataFiles:
        """Re-sign timestamp (new version, new expiry) pointing at the current snapshot."""
        ts = self.timestamp.signed
        ts.snapshot_meta = MetaFile(version=self.snapshot.signed.version)
        ts.version += 1
        ts.expires = _expiry(now, self.lifetimes.timestamp)
        self.timestamp.signatures.clear()
        self.timestamp.sign(timestamp_signer)
        return {"timestamp.json": self.timestamp.to_bytes(_SERIALIZER)}

    def rotate_director(
        self, director: Ed25519PublicKey, *, root_signer: CryptoSigner, now: datetime
    ) -> MetadataFiles:
        """A new root version that trusts ``director`` instead of the old director key."""
        root = self.root.signed
        root.unrecognized_fields.update(director_root_field(director))
        root.version += 1
        root.expires = _expiry(now, self.lifetimes.root)
        self.root.signatures.clear()
        self.root.sign(root_signer)
        return {f"{root.version}.root.json": self.root.to_bytes(_SERIALIZER)}

    def trusts(self, role: str, public: Ed25519PublicKey) -> bool:
        """Whether the current root lists ``public`` for ``role`` (director included)."""
        keyid = sslib_key(public).keyid
        if role == "director":
            return keyid in self.director_keys().get("keys", {})
        return keyid in self.root.signed.roles[role].keyids

    def rotate_online_key(
        self,
        role: str,
        new_key: Ed25519KeyPair,
        *,
        root_signer: CryptoSigner,
        timestamp_signer: CryptoSigner,
        now: datetime,
    ) -> MetadataFiles:
        """A new root version listing ``new_key`` (alone) for ``role``, plus the role's
        metadata re-signed with it; return the new files.

        A new snapshot needs a new timestamp, signed with ``timestamp_signer`` (the current
        timestamp key). Director assignments are not repository metadata: the caller
        re-signs them.
        """
        if role == "director":
            return self.rotate_director(new_key.public, root_signer=root_signer, now=now)
        if role not in ("snapshot", "timestamp"):
            raise ValueError(f"{role!r} is not an online role")
        root = self.root.signed
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        root.add_key(sslib_key(new_key.public), role)
        root.version += 1
        root.expires = _expiry(now, self.lifetimes.root)
        self.root.signatures.clear()
        self.root.sign(root_signer)
        files = {f"{root.version}.root.json": self.root.to_bytes(_SERIALIZER)}
        if role == "snapshot":
            files.update(self.refresh_snapshot(tuf_signer(new_key), timestamp_signer, now))
        else:
            files.update(self.refresh_timestamp(tuf_signer(new_key), now))
        return files


__all__ = ["ImageRepository", "Role"]
