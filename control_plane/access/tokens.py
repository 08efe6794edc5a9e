"""Operator API tokens: random secrets of which only a SHA-256 hash is stored."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.access.roles import Permission, Role, permissions_of
from control_plane.errors import (
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from control_plane.storage.database import Database
from control_plane.storage.models import ApiToken


def new_secret(prefix: str) -> str:
    """A fresh high-entropy secret, prefixed so a leaked one is recognisable."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def secret_hash(secret: str) -> str:
    """The stored form of a secret (tokens are random, so a plain hash suffices)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Principal:
    """An authenticated operator (an API token)."""

    token_id: str
    name: str
    role: Role

    @property
    def actor(self) -> str:
        """How this principal appears in the audit log."""
        return f"token:{self.name}({self.token_id})"

    def require(self, permission: Permission) -> None:
        if permission not in permissions_of(self.role):
            raise PermissionDeniedError(
                f"role {self.role.value!r} may not {permission.value};"
                " ask an admin for a token with a role that may"
            )


def create_api_token(
    session: Session, *, name: str, role: Role, created_by: str, now: datetime
) -> tuple[ApiToken, str]:
    """Store a new token's hash; return the row and the secret (shown to the caller once)."""
    secret = new_secret("ocp")
    row = ApiToken(
        id=new_id("tok"),
        name=name,
        role=role.value,
        token_hash=secret_hash(secret),
        created_at=now,
        created_by=created_by,
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    return row, secret


def authenticate_api_token(session: Session, secret: str) -> Principal:
    row = session.scalars(
        select(ApiToken).where(ApiToken.token_hash == secret_hash(secret))
    ).first()
    if row is None:
        raise AuthenticationError("API token is unknown")
    if row.revoked_at is not None:
        raise AuthenticationError("API token was revoked; ask an admin for a new one")
    return Principal(token_id=row.id, name=row.name, role=Role(row.role))


def list_api_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)))


def revoke_api_token(session: Session, token_id: str, *, now: datetime) -> ApiToken:
    """Mark a token revoked; refuse to revoke the last active admin token."""
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no API token with id {token_id!r}")
    if row.revoked_at is not None:
        raise ConflictError(f"API token {token_id!r} was already revoked at {row.revoked_at}")
    if row.role == Role.ADMIN.value:
        # Row locks on PostgreSQL: two admins revoking each other's tokens serialize here.
        active_admins = session.scalars(
            select(ApiToken.id)
            .where(ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None))
            .with_for_update()
        ).all()
        if len(active_admins) <= 1:
            raise ConflictError(
                f"API token {token_id!r} is the last active admin token; create another"
                " admin token first, then revoke this one"
            )
    row.revoked_at = now
    session.flush()
    return row


def issue_api_token(
    db: Database, *, name: str, role: Role, actor: str, now: datetime
) -> tuple[ApiToken, str]:
    """Create an operator API token (audited); return the row and its secret."""
    with db.transaction() as session:
        row, secret = create_api_token(session, name=name, role=role, created_by=actor, now=now)
        audit.record(
            session,
            actor=actor,
            action="api_token.create",
            target=row.id,
            now=now,
            details={"name": row.name, "role": row.role},
        )
    return row, secret


def api_tokens(db: Database) -> list[ApiToken]:
    with db.transaction() as session:
        return list_api_tokens(session)


def revoke_api_token_audited(db: Database, token_id: str, *, actor: str, now: datetime) -> ApiToken:
    """Revoke a token at once (audited)."""
    with db.transaction() as session:
        row = revoke_api_token(session, token_id, now=now)
        audit.record(
            session,
            actor=actor,
            action="api_token.revoke",
            target=row.id,
            now=now,
            details={"name": row.name, "role": row.role},
        )
        return row
