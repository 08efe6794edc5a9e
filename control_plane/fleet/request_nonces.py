"""Single-use device requests: each (device, nonce) is accepted once within its window.

The table has a unique key on (device, nonce), so replicas on one PostgreSQL share what
they have seen: the second insert of a pair fails, whichever replica tries it. Rows are
kept until the request would be stale anyway (``protocol.device_auth.nonce_expiry``) and
then pruned by :class:`NoncePruner`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from control_plane.errors import AuthenticationError
from control_plane.storage.database import Database
from control_plane.storage.models import RequestNonce

log = logging.getLogger("control_plane")


class ReplayedRequestError(AuthenticationError):
    """A signed device request arrived a second time (same device, same nonce)."""

    error_type = "request_replayed"


def remember_nonce(db: Database, device_id: str, nonce: str, expires_at: int) -> None:
    """Record the nonce; raise :class:`ReplayedRequestError` if it was recorded before."""
    try:
        with db.transaction() as session:
            session.add(
                RequestNonce(
                    device_id=device_id,
                    nonce=nonce,
                    expires_at=datetime.fromtimestamp(expires_at, UTC),
                )
            )
    except IntegrityError as e:
        raise ReplayedRequestError(
            f"device request replayed: device {device_id!r} already sent nonce {nonce};"
            " every signed request is single-use (the device signs each one afresh)"
        ) from e


def prune_expired_nonces(db: Database, now: datetime) -> int:
    """Forget the nonces of requests that are stale by now; return how many."""
    with db.transaction() as session:
        result = session.execute(delete(RequestNonce).where(RequestNonce.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass
class NoncePruner:
    """Background worker: prune expired request nonces every ``interval_seconds``."""

    db: Database
    interval_seconds: float = 60.0
    name: str = "request-nonce-pruner"

    def tick(self, now: datetime) -> None:
        pruned = prune_expired_nonces(self.db, now)
        if pruned:
            log.debug("pruned %d expired request nonces", pruned)
