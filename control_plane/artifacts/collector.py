"""The blob store's garbage collector: abandoned upload temp files and orphaned blobs.

A control plane killed mid-upload leaves a temp file; one killed between committing a
blob and writing its row leaves a blob that no artifact names. The collector runs at
start-up (its first tick) and then every ``interval_seconds``: it removes temp files no
live upload holds, and blobs without a row once ``grace_seconds`` have passed since they
were committed (an upload writes its row right after committing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from control_plane.artifacts.blob_store import BlobStore
from control_plane.storage.database import Database
from control_plane.storage.models import Artifact

log = logging.getLogger("control_plane")

ORPHAN_GRACE_SECONDS = 600.0


def collect_orphan_blobs(
    db: Database, blobs: BlobStore, now: datetime, *, grace_seconds: float
) -> list[Path]:
    """Delete committed blobs that no artifact row names (past the grace); return them."""
    names = blobs.blob_names()
    if not names:
        return []
    known: set[str] = set()
    with db.transaction() as session:
        for i in range(0, len(names), 1000):  # PostgreSQL's bind-parameter limit
            batch = names[i : i + 1000]
            known.update(session.scalars(select(Artifact.sha256).where(Artifact.sha256.in_(batch))))
    candidates = blobs.orphans(known, now=now.timestamp(), grace_seconds=grace_seconds)
    if not candidates:
        return []
    with db.transaction() as session:  # re-check: a row may have been written meanwhile
        named = set(
            session.scalars(
                select(Artifact.sha256).where(Artifact.sha256.in_([p.name for p in candidates]))
            )
        )
    removed = []
    for path in candidates:
        if path.name in named:
            continue
        try:
            if path.stat().st_mtime >= now.timestamp() - grace_seconds:
                continue  # re-committed by an upload of the same bytes just now
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
        log.warning("removed orphaned blob %s (no artifact row; a crash mid-upload)", path.name)
    return removed


@dataclass
class BlobCollector:
    """Background worker over :func:`collect_orphan_blobs` and the temp-file sweep."""

    db: Database
    blobs: BlobStore
    interval_seconds: float = 300.0
    grace_seconds: float = ORPHAN_GRACE_SECONDS
    name: str = "blob-collector"

    def tick(self, now: datetime) -> None:
        swept = self.blobs.prepare(now=now.timestamp())
        for path in swept:
            log.warning("removed abandoned upload temp file %s", path.name)
        collect_orphan_blobs(self.db, self.blobs, now, grace_seconds=self.grace_seconds)
