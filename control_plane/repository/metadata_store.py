"""TUF metadata kept in the database, and the changes that keep it fresh.

Every change is a compare-and-swap on ``timestamp.json``'s version plus inserts of
new, uniquely named files, inside one transaction: two replicas that race both
compute the same next version, one commits, the other's transaction fails and is
retried on the new state. No target is lost and nothing is half written.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Snapshot, TargetFile, Timestamp

from control_plane.errors import ConflictError, NotInitializedError, ServiceUnavailableError
from control_plane.repository import (
    ImageRepository,
    MetadataFiles,
    RepositoryLifetimes,
    sslib_key,
    tuf_signer,
)
from control_plane.repository.keyring import OnlineKeys, OnlineKeySource
from control_plane.storage.database import ConcurrentUpdateError, Database, retrying
from control_plane.storage.models import TufMetadataFile
from protocol.keys import Ed25519KeyPair

TIMESTAMP_FILE = "timestamp.json"
_VERSIONED_ROLES = ("root", "targets", "snapshot")

T = TypeVar("T")


def _role_and_version(file_name: str) -> tuple[str, int]:
    version, role, _ = file_name.split(".")
    return role, int(version)


def read_file(session: Session, file_name: str) -> bytes | None:
    if file_name == "root.json":
        row = session.scalars(
            select(TufMetadataFile)
            .where(TufMetadataFile.role == "root")
            .order_by(TufMetadataFile.version.desc())
            .limit(1)
        ).first()
    else:
        row = session.scalars(
            select(TufMetadataFile).where(TufMetadataFile.file_name == file_name)
        ).first()
    return None if row is None else row.content


def is_initialized(session: Session) -> bool:
    count = session.scalar(select(func.count()).select_from(TufMetadataFile))
    return bool(count)


def lock_repository(session: Session) -> None:
    """Serialize repository writers across replicas (a row lock on PostgreSQL)."""
    session.execute(
        select(TufMetadataFile.id)
        .where(TufMetadataFile.file_name == TIMESTAMP_FILE)
        .with_for_update()
    )


def load_repository(session: Session, lifetimes: RepositoryLifetimes) -> ImageRepository:
    latest: dict[str, bytes] = {}
    for role in _VERSIONED_ROLES:
        row = session.scalars(
            select(TufMetadataFile)
            .where(TufMetadataFile.role == role)
            .order_by(TufMetadataFile.version.desc())
            .limit(1)
        ).first()
        if row is None:
            raise NotInitializedError("the image repository has no metadata; run 'outpost-cp init'")
        latest[role] = row.content
    timestamp = read_file(session, TIMESTAMP_FILE)
    if timestamp is None:
        raise NotInitializedError("the image repository has no timestamp; run 'outpost-cp init'")
    return ImageRepository.from_files(
        root=latest["root"],
        targets=latest["targets"],
        snapshot=latest["snapshot"],
        timestamp=timestamp,
        lifetimes=lifetimes,
    )


def save_files(
    session: Session,
    files: MetadataFiles,
    *,
    timestamp_version: int,
    previous_timestamp_version: int | None,
    now: datetime,
) -> None:
    """Insert new versioned files and swap timestamp.json if it is still the one we read."""
    for name, content in files.items():
        if name == TIMESTAMP_FILE:
            continue
        role, version = _role_and_version(name)
        session.add(
            TufMetadataFile(
                file_name=name, role=role, version=version, content=content, created_at=now
            )
        )
    if TIMESTAMP_FILE in files:
        content = files[TIMESTAMP_FILE]
        if previous_timestamp_version is None:
            session.add(
                TufMetadataFile(
                    file_name=TIMESTAMP_FILE,
                    role="timestamp",
                    version=timestamp_version,
                    content=content,
                    created_at=now,
                )
            )
        else:
            swapped = session.execute(
                update(TufMetadataFile)
                .where(
                    TufMetadataFile.file_name == TIMESTAMP_FILE,
                    TufMetadataFile.version == previous_timestamp_version,
                )
                .values(version=timestamp_version, content=content, created_at=now)
            )
            if swapped.rowcount != 1:  # type: ignore[attr-defined]
                raise ConcurrentUpdateError("timestamp.json changed underneath us")
    session.flush()


class MetadataStore:
    """Publishing and refreshing the image repository held in the database."""

    def __init__(
        self, db: Database, lifetimes: RepositoryLifetimes, online: OnlineKeySource
    ) -> None:
        self.db = db
        self.lifetimes = lifetimes
        self.online_keys = online
        # One writer at a time within a process; across processes the database decides.
        self._writer = threading.Lock()

    @property
    def online(self) -> OnlineKeys:
        """The online keys on disk now (re-read after ``outpost-cp rotate-key``)."""
        return self.online_keys.current()

    def trusted_online(self, repo: ImageRepository) -> OnlineKeys:
        """The online keys, refused unless ``repo``'s root lists the snapshot and timestamp
        keys: signing with a key root no longer trusts would break every client."""
        keys = self.online
        if not (
            repo.trusts("snapshot", keys.snapshot.public)
            and repo.trusts("timestamp", keys.timestamp.public)
        ):
            raise ServiceUnavailableError(
                "the online key files are not the keys the current root trusts (a key"
                " rotation is finishing, or keys/online is out of step with the database);"
                " retry shortly, else see docs/runbooks/cp-online-key-compromise.md"
            )
        return keys

    def write(self, work: Callable[[Session], T]) -> T:
        """Run a repository-changing transaction, serialized and retried on conflict."""
        with self._writer:
            return retrying(self.db, work)

    def add_targets(
        self,
        session: Session,
        targets: Iterable[TargetFile],
        targets_key: Ed25519KeyPair,
        now: datetime,
    ) -> int:
        """Sign ``targets`` into the repository; return the targets version listing them.

        Call inside :meth:`write`. Targets already listed identically are not signed again.
        """
        lock_repository(session)
        repo = load_repository(session, self.lifetimes)
        if sslib_key(targets_key.public).keyid not in repo.root.signed.roles["targets"].keyids:
            raise ConflictError(
                "the targets key file is not the key that root trusts for targets;"
                " put the targets key created by 'outpost-cp init' in the offline keys folder"
            )
        new = [t for t in targets if repo.target(t.path) != t]
        if not new:
            return repo.targets.signed.version
        previous = repo.timestamp.signed.version
        online = self.trusted_online(repo)
        files = repo.add_targets(
            new,
            targets_signer=tuf_signer(targets_key),
            snapshot_signer=tuf_signer(online.snapshot),
            timestamp_signer=tuf_signer(online.timestamp),
            now=now,
        )
        save_files(
            session,
            files,
            timestamp_version=repo.timestamp.signed.version,
            previous_timestamp_version=previous,
            now=now,
        )
        return repo.targets.signed.version

    def _half_life_passed(self, expires: datetime, lifetime: timedelta, now: datetime) -> bool:
        return expires - now < lifetime / 2

    def _online_roles_stale(self, session: Session, now: datetime) -> bool:
        timestamp = read_file(session, TIMESTAMP_FILE)
        snapshot_row = session.scalars(
            select(TufMetadataFile)
            .where(TufMetadataFile.role == "snapshot")
            .order_by(TufMetadataFile.version.desc())
            .limit(1)
        ).first()
        if timestamp is None or snapshot_row is None:
            raise NotInitializedError("the image repository has no metadata; run 'outpost-cp init'")
        ts_expires = Metadata[Timestamp].from_bytes(timestamp).signed.expires
        snap_expires = Metadata[Snapshot].from_bytes(snapshot_row.content).signed.expires
        return self._half_life_passed(
            ts_expires, self.lifetimes.timestamp, now
        ) or self._half_life_passed(snap_expires, self.lifetimes.snapshot, now)

    def _refresh(self, session: Session, now: datetime) -> None:
        repo = load_repository(session, self.lifetimes)
        previous = repo.timestamp.signed.version
        online = self.trusted_online(repo)  # refusing leaves the current, valid files
        snapshot_signer = tuf_signer(online.snapshot)
        timestamp_signer = tuf_signer(online.timestamp)
        if self._half_life_passed(repo.snapshot.signed.expires, self.lifetimes.snapshot, now):
            files = repo.refresh_snapshot(snapshot_signer, timestamp_signer, now)
        elif self._half_life_passed(repo.timestamp.signed.expires, self.lifetimes.timestamp, now):
            files = repo.refresh_timestamp(timestamp_signer, now)
        else:
            return  # another replica refreshed it meanwhile
        save_files(
            session,
            files,
            timestamp_version=repo.timestamp.signed.version,
            previous_timestamp_version=previous,
            now=now,
        )

    def read(self, file_name: str) -> bytes | None:
        """A stored metadata file's bytes (``None`` if there is none by that name)."""
        with self.db.transaction() as session:
            return read_file(session, file_name)

    def current_timestamp(self, now: datetime) -> bytes:
        """``timestamp.json``, re-signed first if it (or snapshot) is past half its lifetime.

        Stateless: any replica may refresh; a lost race just serves the winner's file.
        """
        with self.db.transaction() as session:
            stale = self._online_roles_stale(session, now)
        if stale:
            # On failure the current file is still valid; the next request refreshes it.
            with contextlib.suppress(ServiceUnavailableError):
                retrying(self.db, lambda session: self._refresh(session, now), attempts=3)
        with self.db.transaction() as session:
            content = read_file(session, TIMESTAMP_FILE)
        if content is None:
            raise NotInitializedError(
                "the image repository has no timestamp; run 'outpost-cp init'"
            )
        return content
