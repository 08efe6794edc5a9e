"""Registering an uploaded artifact: type check, content address, database row."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tuf.api.metadata import TargetFile

from control_plane import audit
from control_plane.access.tokens import new_id
from control_plane.artifacts.blob_store import Upload
from control_plane.artifacts.chunks import PreparedChunks, store_chunks
from control_plane.artifacts.formats import file_name, inspect_artifact
from control_plane.errors import InvalidArtifactError, InvalidRequestError, NotFoundError
from control_plane.releases.state import ReleaseState
from control_plane.repository import ImageRepository
from control_plane.storage.database import Database
from control_plane.storage.models import Artifact, Release, ReleaseArtifact
from protocol.chunking import CHUNKS_CUSTOM_KEY
from protocol.messages import ARTIFACT_FORMATS, ARTIFACT_KINDS
from protocol.release_artifacts import POLICY_KIND, PROMPT_PACK_KIND, release_artifact_problems

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_RESERVED_CUSTOM = ("name", "kind", "format", "facts", CHUNKS_CUSTOM_KEY)
MAX_CUSTOM_BYTES = 16_384


@dataclass(frozen=True)
class ArtifactSpec:
    """What the uploader declares about an artifact (checked, pure)."""

    name: str
    kind: str
    format: str
    custom: dict[str, Any]

    @classmethod
    def parse(
        cls,
        *,
        name: str,
        kind: str,
        fmt: str,
        runtime: str | None = None,
        quantization: str | None = None,
        custom_json: str | None = None,
    ) -> ArtifactSpec:
        if not NAME_PATTERN.match(name):
            raise InvalidRequestError(
                "name must be 1-100 characters of [A-Za-z0-9._-] starting with a letter or digit"
            )
        if kind not in ARTIFACT_KINDS:
            raise InvalidRequestError(f"kind must be one of {', '.join(ARTIFACT_KINDS)}")
        if fmt not in ARTIFACT_FORMATS:
            raise InvalidRequestError(f"format must be one of {', '.join(ARTIFACT_FORMATS)}")
        custom: dict[str, Any] = {}
        if custom_json:
            if len(custom_json) > MAX_CUSTOM_BYTES:
                raise InvalidRequestError(f"custom metadata is limited to {MAX_CUSTOM_BYTES} bytes")
            try:
                parsed = json.loads(custom_json)
            except json.JSONDecodeError as e:
                raise InvalidRequestError(f"custom metadata is not valid JSON: {e}") from e
            if not isinstance(parsed, dict):
                raise InvalidRequestError("custom metadata must be a JSON object")
            clash = [k for k in _RESERVED_CUSTOM if k in parsed]
            if clash:
                raise InvalidRequestError(f"custom metadata may not set {', '.join(clash)}")
            custom.update(parsed)
        for label, value in (("runtime", runtime), ("quantization", quantization)):
            if value is not None:
                if not _LABEL.match(value):
                    raise InvalidRequestError(f"{label} must be 1-64 of [A-Za-z0-9._+-]")
                custom[label] = value
        return cls(name=name, kind=kind, format=fmt, custom=custom)


def target_custom(artifact: Artifact) -> dict[str, Any]:
    """The ``custom`` field of the artifact's TUF target entry."""
    return {
        "name": artifact.name,
        "kind": artifact.kind,
        "format": artifact.format,
        **artifact.custom,
    }


def target_file(artifact: Artifact) -> TargetFile:
    return ImageRepository.target_file(
        artifact.target_path, artifact.sha256, artifact.length, target_custom(artifact)
    )


def check_upload(upload: Upload, spec: ArtifactSpec) -> dict[str, Any]:
    """Type-check the finished upload on disk; return facts about it."""
    with open(upload.temp_path, "rb", buffering=1 << 20) as stream:
        facts = inspect_artifact(stream, spec.format, upload.length)
    if spec.kind in (PROMPT_PACK_KIND, POLICY_KIND):
        if spec.format != "json":
            raise InvalidArtifactError(f"a {spec.kind} artifact is JSON (format json)")
        problems = release_artifact_problems(spec.kind, upload.temp_path.read_bytes())
        if problems:
            listed = "; ".join(str(p) for p in problems[:10])
            raise InvalidArtifactError(
                f"not a valid {spec.kind}: {listed} (see docs/remote-config.md)"
            )
    return facts


def register_artifact(
    db: Database,
    *,
    upload: Upload,
    sha256: str,
    spec: ArtifactSpec,
    facts: dict[str, Any],
    actor: str,
    now: datetime,
    chunks: PreparedChunks | None = None,
) -> tuple[Artifact, bool]:
    """Store the blob and its row; the same bytes again return the existing artifact.

    ``chunks``: its chunk manifest (delta updates), stored in the same transaction; its
    sha256 and length go into the custom metadata that the artifact's target is signed with.
    Returns ``(artifact, created)``.
    """
    with db.transaction() as session:
        existing = session.scalars(select(Artifact).where(Artifact.sha256 == sha256)).first()
    if existing is not None:
        upload.discard()
        return existing, False
    upload.commit(sha256)
    custom = dict(spec.custom)
    if facts:
        custom["facts"] = facts
        if "quantization" in facts:
            custom.setdefault("quantization", facts["quantization"])
    target_path = f"{sha256}/{file_name(spec.name, spec.format)}"
    if chunks is not None:
        custom[CHUNKS_CUSTOM_KEY] = chunks.custom(target_path)
    artifact = Artifact(
        id=new_id("art"),
        sha256=sha256,
        name=spec.name,
        kind=spec.kind,
        format=spec.format,
        length=upload.length,
        target_path=target_path,
        custom=custom,
        created_at=now,
        created_by=actor,
    )
    try:
        with db.transaction() as session:
            session.add(artifact)
            if chunks is not None:
                store_chunks(session, sha256, chunks, now)
            audit.record(
                session,
                actor=actor,
                action="artifact.upload",
                target=artifact.id,
                now=now,
                details={
                    "name": spec.name,
                    "sha256": sha256,
                    "length": upload.length,
                    "kind": spec.kind,
                    "format": spec.format,
                },
            )
    except IntegrityError:  # the same bytes registered concurrently
        with db.transaction() as session:
            winner = session.scalars(select(Artifact).where(Artifact.sha256 == sha256)).one()
        return winner, False
    return artifact, True


def list_artifacts(db: Database) -> list[Artifact]:
    with db.transaction() as session:
        return list(session.scalars(select(Artifact).order_by(Artifact.created_at.desc())))


def get_artifact(db: Database, artifact_id: str) -> Artifact:
    with db.transaction() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise NotFoundError(f"no artifact with id {artifact_id!r}")
        return artifact


def published_artifact(db: Database, target_paths: list[str]) -> Artifact | None:
    """The artifact at one of ``target_paths`` if a published release holds it."""
    with db.transaction() as session:
        return session.scalars(
            select(Artifact)
            .where(Artifact.target_path.in_(target_paths))
            .where(
                Artifact.id.in_(
                    select(ReleaseArtifact.artifact_id)
                    .join(Release, Release.id == ReleaseArtifact.release_id)
                    .where(Release.state == ReleaseState.PUBLISHED)
                )
            )
        ).first()
