"""Delta updates on the control plane: every uploaded artifact is chunked once (content-
defined, :mod:`protocol.chunking`); the manifest is stored beside the artifact's row and its
sha256 and length go into the artifact's signed target custom metadata (``chunks``), so a
mirror that alters the manifest is caught by the device like an altered artifact.

A device on any earlier release reuses the chunks its blobs share with the new artifact and
range-requests the rest: there is no per-pair delta to prepare, and :func:`delta_report`
tells how many bytes a device on each earlier release will download.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.storage.models import (
    Artifact,
    ChunkManifestRecord,
    Device,
    Release,
    ReleaseArtifact,
)
from protocol.chunking import (
    DEFAULT_PARAMS,
    ChunkManifest,
    ChunkManifestError,
    ChunkParams,
    chunk_file,
    chunk_manifest_path,
    decode_manifest,
    delta_bytes,
    encode_manifest,
)


@dataclass(frozen=True)
class PreparedChunks:
    """A chunk manifest computed for an upload, with what it cost."""

    content: bytes
    sha256: str
    chunk_count: int
    cpu_seconds: float

    def custom(self, target_path: str) -> dict[str, Any]:
        """The entry of the artifact's target custom metadata (key ``CHUNKS_CUSTOM_KEY``)."""
        return {
            "path": chunk_manifest_path(target_path),
            "sha256": self.sha256,
            "length": len(self.content),
        }


def prepare_chunks(path: Path, params: ChunkParams = DEFAULT_PARAMS) -> PreparedChunks:
    """Chunk the uploaded file (CPU seconds of this thread measured, for the benchmark
    and ``releases show``)."""
    started = time.thread_time()
    manifest = chunk_file(path, params)
    content = encode_manifest(manifest)
    return PreparedChunks(
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        chunk_count=len(manifest.chunks),
        cpu_seconds=time.thread_time() - started,
    )


def store_chunks(
    session: Session, artifact_sha256: str, prepared: PreparedChunks, now: datetime
) -> None:
    session.add(
        ChunkManifestRecord(
            artifact_sha256=artifact_sha256,
            sha256=prepared.sha256,
            length=len(prepared.content),
            chunk_count=prepared.chunk_count,
            content=prepared.content,
            cpu_seconds=prepared.cpu_seconds,
            created_at=now,
        )
    )


def manifest_content(session: Session, artifact_sha256: str) -> bytes | None:
    row = session.get(ChunkManifestRecord, artifact_sha256)
    return None if row is None else row.content


def _manifest(session: Session, artifact: Artifact) -> ChunkManifest | None:
    content = manifest_content(session, artifact.sha256)
    if content is None:
        return None
    try:
        return decode_manifest(content, artifact_sha256=artifact.sha256, length=artifact.length)
    except ChunkManifestError:
        return None


def _artifacts(session: Session, release_id: str) -> list[Artifact]:
    return list(
        session.scalars(
            select(Artifact)
            .join(ReleaseArtifact, ReleaseArtifact.artifact_id == Artifact.id)
            .where(ReleaseArtifact.release_id == release_id)
            .order_by(ReleaseArtifact.position)
        )
    )


def delta_report(session: Session, release: Release, *, limit: int = 20) -> list[dict[str, Any]]:
    """For each earlier release devices are known to run (a device reported it installed),
    and each earlier version of the same name: how many bytes a device on it downloads for
    ``release`` (artifacts it already has cost nothing; a changed artifact costs the chunks
    it does not share with the device's artifacts; one without a manifest costs it all)."""
    running = dict(
        session.execute(
            select(Device.installed_release_id, func.count(Device.id))
            .where(Device.installed_release_id.is_not(None))
            .group_by(Device.installed_release_id)
        ).all()
    )
    earlier = session.scalars(
        select(Release.id)
        .where(
            Release.name == release.name,
            Release.id != release.id,
            Release.created_at <= release.created_at,
        )
        .order_by(Release.created_at.desc())
        .limit(limit)
    ).all()
    base_ids = [rid for rid in running if rid != release.id and rid is not None]
    base_ids += [rid for rid in earlier if rid not in base_ids]
    targets = _artifacts(session, release.id)
    full = sum(a.length for a in targets)
    rows: list[dict[str, Any]] = []
    for base_id in base_ids[:limit]:
        base = session.get(Release, base_id)
        if base is None:
            continue
        base_artifacts = _artifacts(session, base_id)
        have = {a.sha256 for a in base_artifacts}
        base_manifests = [m for a in base_artifacts if (m := _manifest(session, a)) is not None]
        download = sum(
            _artifact_download(session, a, base_manifests) for a in targets if a.sha256 not in have
        )
        rows.append(
            {
                "release_id": base.id,
                "release": f"{base.name}@{base.version}",
                "devices": int(running.get(base_id, 0)),
                "download_bytes": download,
                "full_bytes": full,
            }
        )
    return rows


def _artifact_download(session: Session, artifact: Artifact, bases: Sequence[ChunkManifest]) -> int:
    manifest = _manifest(session, artifact)
    if manifest is None or not bases:
        return artifact.length
    fetched = delta_bytes(manifest, bases)
    if fetched >= artifact.length:
        return artifact.length
    row = session.get(ChunkManifestRecord, artifact.sha256)
    return fetched + (row.length if row is not None else 0)
