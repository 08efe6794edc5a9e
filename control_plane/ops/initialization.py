"""``outpost-cp init``: keys, schema, version-1 repository, first admin token."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime

from control_plane import audit
from control_plane.access.roles import Role
from control_plane.access.tokens import create_api_token
from control_plane.errors import AlreadyInitializedError
from control_plane.repository import ImageRepository, RoleKeys, tuf_signer
from control_plane.repository.keyring import Keyring
from control_plane.repository.metadata_store import is_initialized, save_files
from control_plane.settings import ControlPlaneSettings
from control_plane.storage.database import Database, migrate

INIT_ACTOR = "outpost-cp init"


@dataclass(frozen=True)
class InitResult:
    admin_token: str
    root_path: str
    root_sha256: str
    database_url: str

    def as_json(self) -> dict[str, str]:
        return {
            "admin_token": self.admin_token,
            "root_path": self.root_path,
            "root_sha256": self.root_sha256,
            "database_url": self.database_url,
        }


def _write_public_file(path: os.PathLike[str], content: bytes) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def initialize(settings: ControlPlaneSettings, now: datetime) -> InitResult:
    """Set up a fresh control plane; refuse if the data dir or database already has one."""
    keyring = Keyring(
        offline_dir=settings.resolved_offline_keys_dir, online_dir=settings.online_keys_dir
    )
    if settings.root_file.exists() or keyring.path("director").exists():
        raise AlreadyInitializedError(
            f"{settings.data_dir} is already initialized; refusing to overwrite its keys"
            " (use a new --data-dir to start another control plane)"
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database.from_url(settings.resolved_database_url)
    try:
        migrate(db.engine)
        with db.transaction() as session:
            if is_initialized(session):
                raise AlreadyInitializedError(
                    f"the database {settings.display_database_url} already holds an image"
                    " repository; give a new, empty database"
                )
        keys = keyring.generate()
        _, files = ImageRepository.create(
            RoleKeys(
                root=keys.root.public,
                targets=keys.targets.public,
                snapshot=keys.online.snapshot.public,
                timestamp=keys.online.timestamp.public,
                director=keys.online.director.public,
            ),
            root_signer=tuf_signer(keys.root),
            targets_signer=tuf_signer(keys.targets),
            snapshot_signer=tuf_signer(keys.online.snapshot),
            timestamp_signer=tuf_signer(keys.online.timestamp),
            now=now,
            lifetimes=settings.lifetimes,
        )
        root = files["1.root.json"]
        with db.transaction() as session:
            save_files(
                session, files, timestamp_version=1, previous_timestamp_version=None, now=now
            )
            token, secret = create_api_token(
                session, name="admin", role=Role.ADMIN, created_by=INIT_ACTOR, now=now
            )
            audit.record(
                session,
                actor=INIT_ACTOR,
                action="control_plane.init",
                target="image-repository",
                now=now,
                details={
                    "root_sha256": hashlib.sha256(root).hexdigest(),
                    "admin_token_id": token.id,
                    "key_ids": {
                        "root": keys.root.key_id,
                        "targets": keys.targets.key_id,
                        "snapshot": keys.online.snapshot.key_id,
                        "timestamp": keys.online.timestamp.key_id,
                        "director": keys.online.director.key_id,
                    },
                },
            )
    finally:
        db.dispose()
    _write_public_file(settings.root_file, root)
    return InitResult(
        admin_token=secret,
        root_path=str(settings.root_file.resolve()),
        root_sha256=hashlib.sha256(root).hexdigest(),
        database_url=settings.display_database_url,
    )
