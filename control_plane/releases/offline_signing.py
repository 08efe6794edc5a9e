"""Publishing releases whose targets the release manager signs on their own machine.

Without the targets key on the server, a new release is stored ``pending-signature``.
:func:`pending_targets` proposes the next targets metadata (unsigned);
:func:`accept_signed_targets` checks the signed copy (see
:mod:`control_plane.repository.offline_targets`), re-signs snapshot and timestamp with
the online keys and publishes every pending release, in one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from control_plane import audit
from control_plane.artifacts.service import target_file
from control_plane.errors import (
    NothingToSignError,
    TargetsSignatureRejectedError,
    TargetsVersionConflictError,
)
from control_plane.releases.state import ReleaseState
from control_plane.repository import ImageRepository, tuf_signer
from control_plane.repository.metadata_store import (
    MetadataStore,
    load_repository,
    lock_repository,
    save_files,
)
from control_plane.repository.offline_targets import (
    check_signed_targets,
    next_targets,
    serialize,
)
from control_plane.storage.models import Release

OFFLINE_SIGNER = "offline targets key"


@dataclass(frozen=True)
class PendingTargets:
    """The unsigned next targets metadata and the releases it publishes."""

    version: int
    metadata: dict[str, Any]
    releases: list[Release]


@dataclass(frozen=True)
class SignedTargetsAccepted:
    version: int
    releases: list[Release]


def pending_releases(session: Session) -> list[Release]:
    return list(
        session.scalars(
            select(Release)
            .where(Release.state == ReleaseState.PENDING_SIGNATURE)
            .order_by(Release.created_at, Release.id)
        )
    )


def unlisted_targets(repo: ImageRepository, releases: Sequence[Release]) -> dict[str, TargetFile]:
    """Targets of ``releases`` that the current targets metadata does not list as they are."""
    wanted = (target_file(m.artifact) for r in releases for m in r.members)
    return {t.path: t for t in wanted if repo.target(t.path) != t}


def publish_pending(
    session: Session,
    releases: Sequence[Release],
    *,
    targets_version: int,
    signer: str,
    actor: str,
    now: datetime,
) -> None:
    """Mark ``releases`` published in ``targets_version`` (audited, caller's transaction)."""
    for release in releases:
        release.state = ReleaseState.PUBLISHED
        release.targets_version = targets_version
        audit.record(
            session,
            actor=actor,
            action="release.publish",
            target=release.id,
            now=now,
            details={
                "name": release.name,
                "version": release.version,
                "artifacts": [m.artifact_id for m in release.members],
                "targets_version": targets_version,
                "signed_with": signer,
                "created_by": release.created_by,
            },
        )


def _release_names(releases: Sequence[Release]) -> list[str]:
    return [f"{r.name}@{r.version}" for r in releases]


def pending_targets(store: MetadataStore, *, actor: str, now: datetime) -> PendingTargets:
    """The next targets version to sign offline (audited); 409 when nothing is pending."""

    def work(session: Session) -> PendingTargets:
        releases = pending_releases(session)
        if not releases:
            raise NothingToSignError(
                "no release awaits the targets signature; publish a release first"
            )
        repo = load_repository(session, store.lifetimes)
        unsigned = next_targets(
            repo.targets,
            unlisted_targets(repo, releases),
            expires=now + store.lifetimes.targets,
        )
        audit.record(
            session,
            actor=actor,
            action="targets.signing_requested",
            target=f"targets@{unsigned.signed.version}",
            now=now,
            details={
                "targets_version": unsigned.signed.version,
                "releases": [r.id for r in releases],
            },
        )
        return PendingTargets(
            version=unsigned.signed.version,
            metadata=json.loads(serialize(unsigned)),
            releases=releases,
        )

    return store.write(work)


def accept_signed_targets(
    store: MetadataStore, uploaded: bytes, *, actor: str, now: datetime
) -> SignedTargetsAccepted:
    """Install targets metadata signed offline and publish the pending releases (audited).

    Refusals change nothing but are audited as ``targets.signature_rejected``.
    """

    def work(session: Session) -> SignedTargetsAccepted:
        lock_repository(session)
        releases = pending_releases(session)
        if not releases:
            raise NothingToSignError("no release awaits the targets signature; nothing was changed")
        repo = load_repository(session, store.lifetimes)
        signed = check_signed_targets(
            repo.root, repo.targets, unlisted_targets(repo, releases), uploaded, now
        )
        previous = repo.timestamp.signed.version
        added = sorted(set(signed.signed.targets) - set(repo.targets.signed.targets))
        online = store.trusted_online(repo)
        files = repo.install_targets(
            signed,
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
        version = signed.signed.version
        audit.record(
            session,
            actor=actor,
            action="targets.signed_offline",
            target=f"targets@{version}",
            now=now,
            details={
                "targets_version": version,
                "snapshot_version": repo.snapshot.signed.version,
                "releases": [r.id for r in releases],
                "targets_added": added,
            },
        )
        publish_pending(
            session, releases, targets_version=version, signer=OFFLINE_SIGNER, actor=actor, now=now
        )
        session.flush()
        return SignedTargetsAccepted(version=version, releases=releases)

    try:
        return store.write(work)
    except (TargetsSignatureRejectedError, TargetsVersionConflictError) as e:
        with store.db.transaction() as session:
            audit.record(
                session,
                actor=actor,
                action="targets.signature_rejected",
                target="targets",
                now=now,
                details={"reason": e.error_type, "message": str(e)},
            )
        raise
