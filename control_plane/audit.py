"""The append-only audit log: every mutating operator action and every enrollment."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.storage.database import Database
from control_plane.storage.models import AuditEntry


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str,
    now: datetime,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Add one entry in the caller's transaction (it commits or rolls back with the action)."""
    session.add(
        AuditEntry(at=now, actor=actor, action=action, target=target, details=dict(details or {}))
    )


def entries(db: Database, *, limit: int, before_id: int | None = None) -> list[AuditEntry]:
    """Audit entries, newest first; page with ``before_id``."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    with db.transaction() as session:
        return list(session.scalars(query))
