"""Creating a release: its artifacts are signed into the image repository in the same
transaction that stores the release. Without the targets key on the server the release
is stored ``pending-signature`` instead, until the release manager signs the targets
offline (see :mod:`control_plane.releases.offline_signing`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.access.tokens import new_id
from control_plane.artifacts.service import target_file
from control_plane.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    TargetsKeyOfflineError,
)
from control_plane.releases.offline_signing import (
    pending_releases,
    publish_pending,
    unlisted_targets,
)
from control_plane.releases.state import ReleaseState
from control_plane.repository.keyring import Keyring
from control_plane.repository.metadata_store import MetadataStore, load_repository, lock_repository
from control_plane.storage.database import Database
from control_plane.storage.models import Artifact, Release, ReleaseArtifact

RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RELEASE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def create_release(
    store: MetadataStore,
    keyring: Keyring,
    *,
    name: str,
    version: str,
    artifact_ids: Sequence[str],
    config: dict[str, Any],
    actor: str,
    now: datetime,
) -> Release:
    """Store the release and publish its artifacts (audited).

    With the targets key on the server, the artifacts (and those of any release still
    pending) are signed now. Without it, a release whose artifacts are not all listed
    already is stored ``pending-signature``: it waits for ``outpost-cp sign-targets``.
    """
    if len(set(artifact_ids)) != len(artifact_ids):
        raise InvalidRequestError("a release lists each artifact once")
    try:
        targets_key = keyring.load_targets()
    except TargetsKeyOfflineError:
        targets_key = None

    def work(session: Session) -> Release:
        duplicate = session.scalars(
            select(Release.id).where(Release.name == name, Release.version == version)
        ).first()
        if duplicate is not None:
            raise ConflictError(
                f"release {name}@{version} already exists ({duplicate}); releases are"
                " immutable, publish a new version"
            )
        rows = session.scalars(select(Artifact).where(Artifact.id.in_(artifact_ids))).all()
        by_id = {a.id: a for a in rows}
        missing = [i for i in artifact_ids if i not in by_id]
        if missing:
            raise InvalidRequestError(f"unknown artifact ids: {', '.join(missing)}")
        artifacts = [by_id[i] for i in artifact_ids]
        names = [a.name for a in artifacts]
        if len(set(names)) != len(names):
            raise InvalidRequestError("two artifacts of a release share a name; names must differ")
        targets = [target_file(a) for a in artifacts]
        state = ReleaseState.PUBLISHED
        if targets_key is not None:
            waiting = pending_releases(session)
            targets += unlisted_targets(load_repository(session, store.lifetimes), waiting).values()
            targets_version = store.add_targets(session, targets, targets_key, now)
            publish_pending(
                session,
                waiting,
                targets_version=targets_version,
                signer="online targets key",
                actor=actor,
                now=now,
            )
        else:
            lock_repository(session)
            repo = load_repository(session, store.lifetimes)
            targets_version = repo.targets.signed.version
            if any(repo.target(t.path) != t for t in targets):
                state = ReleaseState.PENDING_SIGNATURE
                targets_version += 1
        release = Release(
            id=new_id("rel"),
            name=name,
            version=version,
            config=config,
            targets_version=targets_version,
            created_at=now,
            created_by=actor,
            state=state,
        )
        session.add(release)
        session.flush()
        for position, artifact in enumerate(artifacts):
            session.add(
                ReleaseArtifact(release_id=release.id, artifact_id=artifact.id, position=position)
            )
        audit.record(
            session,
            actor=actor,
            action=(
                "release.publish" if state == ReleaseState.PUBLISHED else "release.await_signature"
            ),
            target=release.id,
            now=now,
            details={
                "name": name,
                "version": version,
                "artifacts": list(artifact_ids),
                "targets_version": targets_version,
                "state": state,
            },
        )
        session.flush()
        session.refresh(release)
        return release

    return store.write(work)


def get_release(session: Session, release_id: str) -> Release:
    release = session.get(Release, release_id)
    if release is None:
        raise NotFoundError(f"no release with id {release_id!r}")
    return release


def get_release_by_ref(session: Session, ref: str) -> Release:
    """A release by id (``rel_...``) or by ``name@version`` (ids never contain ``@``)."""
    name, at, version = ref.partition("@")
    if not at:
        return get_release(session, ref)
    release = session.scalars(
        select(Release).where(Release.name == name, Release.version == version)
    ).first()
    if release is None:
        raise NotFoundError(
            f"no release {name}@{version}; GET /api/v1/releases?name={name} lists its versions"
        )
    return release


def list_releases(db: Database, *, name: str | None = None) -> list[Release]:
    """Releases, newest first; only those called ``name`` when it is given."""
    query = select(Release).order_by(Release.created_at.desc())
    if name is not None:
        query = query.where(Release.name == name)
    with db.transaction() as session:
        return list(session.scalars(query))


def show_release(db: Database, ref: str) -> Release:
    """A release by id or ``name@version``."""
    with db.transaction() as session:
        return get_release_by_ref(session, ref)
