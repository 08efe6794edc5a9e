"""Issuing assignments against the database (the director's adapter)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.metadata import Metadata, Root

from control_plane import audit
from control_plane.director.assignment import (
    ReleaseFacts,
    build_assignment,
    needs_reissue,
    next_version,
    sign_assignment,
)
from control_plane.errors import (
    NotFoundError,
    NotInitializedError,
    ReleaseAwaitingSignatureError,
    ServiceUnavailableError,
)
from control_plane.nudges import NudgePublisher, nudge_after_commit
from control_plane.releases.state import ReleaseState
from control_plane.repository import sslib_key
from control_plane.repository.keyring import OnlineKeySource
from control_plane.repository.metadata_store import read_file
from control_plane.storage.database import Database, retrying
from control_plane.storage.models import AssignmentRecord, Device, Release
from protocol.keys import Ed25519KeyPair
from protocol.messages import DIRECTOR_ROOT_FIELD, TargetRef


def release_facts(release: Release) -> ReleaseFacts:
    targets = tuple(
        TargetRef(
            name=m.artifact.name,
            path=m.artifact.target_path,
            sha256=m.artifact.sha256,
            length=m.artifact.length,
            kind=m.artifact.kind,  # type: ignore[arg-type]
            format=m.artifact.format,  # type: ignore[arg-type]
        )
        for m in release.members
    )
    return ReleaseFacts(
        id=release.id,
        name=release.name,
        version=release.version,
        targets=targets,
        config=release.config,
    )


def latest_assignment(session: Session, device_id: str) -> AssignmentRecord | None:
    return session.scalars(
        select(AssignmentRecord)
        .where(AssignmentRecord.device_id == device_id)
        .order_by(AssignmentRecord.version.desc())
        .limit(1)
    ).first()


def latest_versions(session: Session, device_ids: Sequence[str]) -> dict[str, int]:
    """Each device's highest assignment version: signed here, or adopted from an offline
    bundle it installed before enrolling (``Device.installed_assignment_version``)."""
    latest: dict[str, int] = {}
    for start in range(0, len(device_ids), 1000):
        chunk = device_ids[start : start + 1000]
        latest.update(
            (device_id, version)
            for device_id, version in session.execute(
                select(AssignmentRecord.device_id, func.max(AssignmentRecord.version))
                .where(AssignmentRecord.device_id.in_(chunk))
                .group_by(AssignmentRecord.device_id)
            ).all()
        )
        for device_id, installed in session.execute(
            select(Device.id, Device.installed_assignment_version).where(
                Device.id.in_(chunk), Device.installed_assignment_version.is_not(None)
            )
        ).all():
            if installed is not None and installed > latest.get(device_id, 0):
                latest[device_id] = int(installed)
    return latest


def issue_assignment(
    session: Session,
    *,
    device_id: str,
    release: Release,
    key: Ed25519KeyPair,
    ttl: timedelta,
    issued_by: str,
    now: datetime,
) -> AssignmentRecord:
    """Sign and store ``device_id``'s next assignment version, naming ``release``; above
    the version a device adopted from an offline bundle installed (the agent refuses a
    lower one as a replay)."""
    previous = latest_versions(session, [device_id]).get(device_id)
    assignment = build_assignment(
        device_id=device_id,
        version=next_version(previous),
        release=release_facts(release),
        now=now,
        ttl=ttl,
    )
    record = AssignmentRecord(
        device_id=device_id,
        version=assignment.version,
        release_id=release.id,
        envelope=sign_assignment(assignment, key).model_dump_json(),
        issued_at=assignment.issued_at,
        expires_at=assignment.expires_at,
        issued_by=issued_by,
    )
    session.add(record)
    session.flush()  # a concurrent issue of the same version fails here, and is retried
    return record


def latest_assignments(
    session: Session, device_ids: Collection[str] | None = None
) -> dict[str, AssignmentRecord]:
    """Each device's newest assignment (all devices in one query, or those named in one
    query per 1,000: PostgreSQL takes at most 65,535 parameters in a statement)."""
    if device_ids is None:
        return _newest_assignments(session, None)
    ids = list(device_ids)
    found: dict[str, AssignmentRecord] = {}
    for start in range(0, len(ids), 1000):
        found.update(_newest_assignments(session, ids[start : start + 1000]))
    return found


def _newest_assignments(
    session: Session, device_ids: list[str] | None
) -> dict[str, AssignmentRecord]:
    newest = select(
        AssignmentRecord.device_id, func.max(AssignmentRecord.version).label("v")
    ).group_by(AssignmentRecord.device_id)
    if device_ids is not None:
        newest = newest.where(AssignmentRecord.device_id.in_(device_ids))
    sub = newest.subquery()
    rows = session.scalars(
        select(AssignmentRecord).join(
            sub,
            (AssignmentRecord.device_id == sub.c.device_id) & (AssignmentRecord.version == sub.c.v),
        )
    )
    return {r.device_id: r for r in rows}


def reissue_latest_assignments(
    session: Session, *, key: Ed25519KeyPair, ttl: timedelta, issued_by: str, now: datetime
) -> int:
    """Re-sign every device's newest assignment with ``key`` as a new version (same
    release); return how many. Used when the director key is rotated."""
    device_ids = session.scalars(
        select(AssignmentRecord.device_id).distinct().order_by(AssignmentRecord.device_id)
    ).all()
    for device_id in device_ids:
        latest = latest_assignment(session, device_id)
        release = None if latest is None else session.get(Release, latest.release_id)
        if release is not None:
            issue_assignment(
                session,
                device_id=device_id,
                release=release,
                key=key,
                ttl=ttl,
                issued_by=issued_by,
                now=now,
            )
    return len(device_ids)


def root_trusts_director(session: Session, key: Ed25519KeyPair) -> bool:
    """Whether the newest root pins ``key`` in its director field."""
    content = read_file(session, "root.json")
    if content is None:
        raise NotInitializedError("the image repository has no root; run 'outpost-cp init'")
    field = Metadata[Root].from_bytes(content).signed.unrecognized_fields.get(DIRECTOR_ROOT_FIELD)
    keys = field.get("keys", {}) if isinstance(field, dict) else {}
    return sslib_key(key.public).keyid in keys


class Director:
    """Signs per-device assignments with the director key and stores them."""

    def __init__(
        self,
        db: Database,
        keys: OnlineKeySource,
        ttl: timedelta,
        *,
        nudges: NudgePublisher | None = None,
    ) -> None:
        self.db = db
        self.keys = keys
        self.ttl = ttl
        self.nudges = nudges  # told (after commit) which devices got a new assignment

    @property
    def key(self) -> Ed25519KeyPair:
        """The director key on disk now (re-read after ``outpost-cp rotate-key``)."""
        return self.keys.current().director

    def _issue(
        self, session: Session, device_id: str, release: Release, issued_by: str, now: datetime
    ) -> AssignmentRecord:
        return self.issue_many(session, [(device_id, release)], issued_by=issued_by, now=now)[
            device_id
        ]

    def issue_many(
        self,
        session: Session,
        moves: Sequence[tuple[str, Release]],
        *,
        issued_by: str,
        now: datetime,
    ) -> dict[str, AssignmentRecord]:
        """Sign the next assignment of each (device, release) in the caller's transaction
        (one key check and one version query for the batch); return them by device."""
        if not moves:
            return {}
        key = self.key
        if not root_trusts_director(session, key):
            raise ServiceUnavailableError(
                "the director key file is not the key the current root trusts (a key"
                " rotation is finishing, or keys/online is out of step with the database);"
                " retry shortly, else see docs/runbooks/cp-online-key-compromise.md"
            )
        device_ids = [device_id for device_id, _ in moves]
        previous = latest_versions(session, device_ids)
        facts: dict[str, ReleaseFacts] = {}
        records: dict[str, AssignmentRecord] = {}
        for device_id, release in moves:
            release_facts_ = facts.get(release.id)
            if release_facts_ is None:
                release_facts_ = facts[release.id] = release_facts(release)
            assignment = build_assignment(
                device_id=device_id,
                version=next_version(previous.get(device_id)),
                release=release_facts_,
                now=now,
                ttl=self.ttl,
            )
            record = AssignmentRecord(
                device_id=device_id,
                version=assignment.version,
                release_id=release.id,
                envelope=sign_assignment(assignment, key).model_dump_json(),
                issued_at=assignment.issued_at,
                expires_at=assignment.expires_at,
                issued_by=issued_by,
            )
            session.add(record)
            records[device_id] = record
        session.flush()
        if self.nudges is not None:
            nudge_after_commit(session, self.nudges, list(records), "assignment")
        return records

    def assign(
        self, *, device_id: str, release_id: str, actor: str, now: datetime
    ) -> AssignmentRecord:
        """Sign the next assignment of ``release_id`` to ``device_id`` (audited)."""

        def work(session: Session) -> AssignmentRecord:
            if session.get(Device, device_id) is None:
                raise NotFoundError(f"no device with id {device_id!r}")
            release = session.get(Release, release_id)
            if release is None:
                raise NotFoundError(f"no release with id {release_id!r}")
            if release.state != ReleaseState.PUBLISHED:
                raise ReleaseAwaitingSignatureError(
                    f"release {release.name}@{release.version} awaits the release manager's"
                    " signature of its targets ('outpost-cp sign-targets'); it can be"
                    " assigned once signed"
                )
            record = self._issue(session, device_id, release, actor, now)
            audit.record(
                session,
                actor=actor,
                action="assignment.create",
                target=device_id,
                now=now,
                details={
                    "release_id": release.id,
                    "release": f"{release.name}@{release.version}",
                    "version": record.version,
                },
            )
            return record

        return retrying(self.db, work)

    def current(self, device_id: str, now: datetime) -> AssignmentRecord | None:
        """The device's newest assignment, re-signed first if past half its lifetime."""

        def work(session: Session) -> AssignmentRecord | None:
            record = latest_assignment(session, device_id)
            if record is None or not needs_reissue(
                issued_at=record.issued_at, expires_at=record.expires_at, now=now
            ):
                return record
            release = session.get(Release, record.release_id)
            if release is None:  # pragma: no cover - foreign key guarantees it
                return record
            return self._issue(session, device_id, release, "director:reissue", now)

        return retrying(self.db, work)
