"""``outpost-cp rotate-key``: replace one online key (snapshot, timestamp or director).

One database transaction writes root version N+1 (signed by the offline root key) that
lists the new key, re-signs what the old key signed (snapshot or timestamp metadata, or
every device's newest assignment as a new version) and records an audit entry. Devices
follow the root chain and take the new key from the newest verified root.

Key files: the new key is written first as ``<role>.key.new`` (0600). Only after the
commit does it replace ``<role>.key``; the old key stays, hard-linked, as
``<role>.key.retired-<UTC time>`` (0600), so a database restored from a backup taken
before the rotation can still be served (shred it once no such backup is kept). A
running ``serve`` re-reads a replaced key file on its next signature and refuses to sign
with a key the newest root does not list, so the few milliseconds between the commit
and the file swap never produce metadata that clients would reject.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.director.service import reissue_latest_assignments
from control_plane.errors import (
    ConflictError,
    InvalidRequestError,
    KeyRotationUnfinishedError,
    RootKeyOfflineError,
)
from control_plane.repository import tuf_signer
from control_plane.repository.keyring import ONLINE_ROLES, Keyring
from control_plane.repository.metadata_store import load_repository, lock_repository, save_files
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database, migrate, retrying
from protocol.keys import Ed25519KeyPair, generate_key_pair, load_private_key, write_private_key

ROTATE_ACTOR = "outpost-cp rotate-key"


@dataclass(frozen=True)
class KeyRotation:
    """What one rotation changed."""

    role: str
    old_key_id: str
    new_key_id: str
    root_version: int
    reissued_assignments: int
    retired_key_path: str
    root_sha256: str

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "old_key_id": self.old_key_id,
            "new_key_id": self.new_key_id,
            "root_version": self.root_version,
            "reissued_assignments": self.reissued_assignments,
            "retired_key_path": self.retired_key_path,
            "root_sha256": self.root_sha256,
        }


def retired_name(role: str, now: datetime) -> str:
    return f"{role}.key.retired-{now.strftime('%Y%m%dT%H%M%SZ')}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_key_files(keyring: Keyring, role: str, now: datetime) -> Path:
    """Keep the old key as a retired file, then atomically put the staged key in place."""
    current = keyring.path(role)
    retired = current.with_name(retired_name(role, now))
    n = 1
    while retired.exists():  # two rotations within a second
        n += 1
        retired = current.with_name(f"{retired_name(role, now)}-{n}")
    os.link(current, retired)  # the live file name never disappears
    os.replace(keyring.staged_path(role), current)
    _fsync_dir(current.parent)
    return retired


def _apply(
    session: Session,
    *,
    role: str,
    new_key: Ed25519KeyPair,
    old_keys: dict[str, Ed25519KeyPair],
    root_key: Ed25519KeyPair,
    settings: ControlPlaneSettings,
    now: datetime,
) -> tuple[int, int, bytes]:
    lock_repository(session)
    repo = load_repository(session, settings.lifetimes)
    if not repo.trusts("root", root_key.public):
        raise RootKeyOfflineError(
            "the given root key is not the key the current root trusts for root;"
            " pass the root.key created by 'outpost-cp init' with --root-key"
        )
    for name, pair in old_keys.items():
        if not repo.trusts(name, pair.public):
            raise ConflictError(
                f"keys/online/{name}.key is not the {name} key the current root trusts;"
                " the key files and the database are out of step (restored from different"
                " backups?): see docs/runbooks/cp-online-key-compromise.md"
            )
    previous = repo.timestamp.signed.version
    files = repo.rotate_online_key(
        role,
        new_key,
        root_signer=tuf_signer(root_key),
        timestamp_signer=tuf_signer(old_keys["timestamp"]),
        now=now,
    )
    save_files(
        session,
        files,
        timestamp_version=repo.timestamp.signed.version,
        previous_timestamp_version=previous,
        now=now,
    )
    reissued = 0
    if role == "director":
        reissued = reissue_latest_assignments(
            session,
            key=new_key,
            ttl=settings.assignment_ttl,
            issued_by="director:rotate-key",
            now=now,
        )
    root_version = repo.root.signed.version
    root_bytes = files[f"{root_version}.root.json"]
    audit.record(
        session,
        actor=ROTATE_ACTOR,
        action="key.rotate",
        target=role,
        now=now,
        details={
            "old_key_id": old_keys[role].key_id,
            "new_key_id": new_key.key_id,
            "root_version": root_version,
            "root_sha256": hashlib.sha256(root_bytes).hexdigest(),
            "reissued_assignments": reissued,
        },
    )
    return root_version, reissued, root_bytes


def rotate_online_key(
    settings: ControlPlaneSettings, role: str, *, now: datetime, root_key_path: Path | None = None
) -> KeyRotation:
    """Replace the online key of ``role`` (see the module docstring); audited."""
    if role not in ONLINE_ROLES:
        raise InvalidRequestError(
            f"{role!r} is not an online role; choose one of {', '.join(ONLINE_ROLES)}"
        )
    keyring = Keyring(
        offline_dir=settings.resolved_offline_keys_dir, online_dir=settings.online_keys_dir
    )
    root_path = root_key_path or keyring.path("root")
    if not root_path.exists():
        raise RootKeyOfflineError(
            f"rotating a key writes a new root, signed with the offline root key; there is no"
            f" root key at {root_path}: pass --root-key PATH (e.g. on removable media)"
        )
    staged = keyring.staged_path(role)
    if staged.exists():
        raise KeyRotationUnfinishedError(
            f"{staged} exists: an earlier rotation did not finish. If 'key.rotate' for"
            f" {role} is in the audit log, move it to {keyring.path(role)}; otherwise delete"
            " it. Then run rotate-key again if still needed"
        )
    online = keyring.load_online()
    old_keys = {
        "snapshot": online.snapshot,
        "timestamp": online.timestamp,
        "director": online.director,
    }
    root_key = load_private_key(root_path)
    new_key = generate_key_pair()
    write_private_key(new_key, staged)
    db = Database.from_url(settings.resolved_database_url)
    try:
        migrate(db.engine)
        root_version, reissued, root_bytes = retrying(
            db,
            lambda session: _apply(
                session,
                role=role,
                new_key=new_key,
                old_keys=old_keys,
                root_key=root_key,
                settings=settings,
                now=now,
            ),
        )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    finally:
        db.dispose()
    retired = _swap_key_files(keyring, role, now)
    return KeyRotation(
        role=role,
        old_key_id=old_keys[role].key_id,
        new_key_id=new_key.key_id,
        root_version=root_version,
        reissued_assignments=reissued,
        retired_key_path=str(retired),
        root_sha256=hashlib.sha256(root_bytes).hexdigest(),
    )
