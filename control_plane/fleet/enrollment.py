"""Enrollment: a one-time token plus a device public key make a device."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.access.tokens import new_id, new_secret, secret_hash
from control_plane.errors import ConflictError, EnrollmentTokenError, InvalidRequestError
from control_plane.fleet.device_keys import is_usable_ed25519_public_key
from control_plane.fleet.tags import enrollment_tags
from control_plane.releases.state import ReleaseState
from control_plane.storage.database import Database
from control_plane.storage.models import Device, EnrollmentToken, Release
from protocol.messages import EnrollRequest, InstalledRelease


def create_enrollment_token(
    session: Session, *, tags: list[str], lifetime: timedelta, actor: str, now: datetime
) -> tuple[EnrollmentToken, str]:
    """Store a new one-time token's hash; return the row and the secret (shown once)."""
    secret = new_secret("oet")
    row = EnrollmentToken(
        id=new_id("etk"),
        token_hash=secret_hash(secret),
        tags=sorted(set(tags)),
        created_at=now,
        created_by=actor,
        expires_at=now + lifetime,
        used_at=None,
    )
    session.add(row)
    audit.record(
        session,
        actor=actor,
        action="enrollment_token.create",
        target=row.id,
        now=now,
        details={"tags": row.tags, "expires_at": row.expires_at.isoformat()},
    )
    session.flush()
    return row, secret


def issue_enrollment_token(
    db: Database, *, tags: list[str], lifetime: timedelta, actor: str, now: datetime
) -> tuple[EnrollmentToken, str]:
    """A one-time enrollment token in its own transaction (audited)."""
    with db.transaction() as session:
        return create_enrollment_token(session, tags=tags, lifetime=lifetime, actor=actor, now=now)


def _consume(session: Session, token: str, now: datetime) -> EnrollmentToken:
    row = session.scalars(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == secret_hash(token))
    ).first()
    if row is None:
        raise EnrollmentTokenError("enrollment token is unknown; ask an operator for a new one")
    if row.used_at is not None:
        raise EnrollmentTokenError(
            "enrollment token was already used; each token enrolls one device"
        )
    if row.expires_at <= now:
        raise EnrollmentTokenError("enrollment token has expired; ask an operator for a new one")
    # The conditional update is the single-use guarantee: of two concurrent enrollments
    # with one token, exactly one changes the row.
    claimed = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise EnrollmentTokenError(
            "enrollment token was already used; each token enrolls one device"
        )
    return row


def enroll(db: Database, request: EnrollRequest, now: datetime) -> Device:
    """Create a device from an enrollment request, consuming its token (audited)."""
    if not is_usable_ed25519_public_key(bytes.fromhex(request.device_public_key)):
        raise InvalidRequestError(
            "device_public_key is not a usable Ed25519 public key (not a curve point,"
            " or of small order); generate a fresh key pair on the device"
        )
    try:
        return _enroll(db, request, now)
    except IntegrityError as e:  # the same key enrolled concurrently
        raise ConflictError(
            "this public key is already enrolled; every device needs its own key pair"
        ) from e


def _adoptable(session: Session, request: EnrollRequest) -> InstalledRelease | None:
    """The release a device installed from an offline bundle, if this control plane
    published it: the device is adopted as serving it (nothing is reinstalled)."""
    installed = request.installed
    if installed is None:
        return None
    release = session.get(Release, installed.release_id)
    if release is None or release.state != ReleaseState.PUBLISHED:
        return None
    return installed


def _enroll(db: Database, request: EnrollRequest, now: datetime) -> Device:
    with db.transaction() as session:
        token = _consume(session, request.token, now)
        existing = session.scalars(
            select(Device.id).where(Device.public_key_hex == request.device_public_key)
        ).first()
        if existing is not None:
            raise ConflictError(
                "this public key is already enrolled; every device needs its own key pair"
            )
        adopted = _adoptable(session, request)
        device = Device(
            id=new_id("dev"),
            name=request.name,
            public_key_hex=request.device_public_key,
            hardware=request.hardware.model_dump(mode="json"),
            tags=enrollment_tags(token.tags, request.tags),
            enrolled_at=now,
            last_seen_at=now,
            installed_release_id=adopted.release_id if adopted else None,
            installed_assignment_version=adopted.assignment_version if adopted else None,
            enrollment_token_id=token.id,
        )
        session.add(device)
        audit.record(
            session,
            actor=f"enrollment-token:{token.id}",
            action="device.enroll",
            target=device.id,
            now=now,
            details={
                "name": device.name,
                "tags": device.tags,
                "hardware": device.hardware,
                "adopted": adopted.model_dump() if adopted else None,
            },
        )
        session.flush()
        return device
