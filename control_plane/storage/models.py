"""Storage models (SQLAlchemy 2, typed). Wire models live in ``control_plane.api.wire``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# BIGINT on PostgreSQL; SQLite only auto-increments a column declared INTEGER.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[str]: JSON(),
    }


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    public_key_hex: Mapped[str] = mapped_column(String(64), unique=True)
    hardware: Mapped[dict[str, Any]]
    tags: Mapped[list[str]]
    enrolled_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    installed_release_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("releases.id"))
    installed_assignment_version: Mapped[int | None]
    enrollment_token_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("enrollment_tokens.id")
    )

    installed_release: Mapped[Release | None] = relationship(lazy="raise")


class EnrollmentToken(Base):
    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tags: Mapped[list[str]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None]


class Artifact(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32))
    format: Mapped[str] = mapped_column(String(32))
    length: Mapped[int] = mapped_column(BigInteger)
    target_path: Mapped[str] = mapped_column(String(200), unique=True)
    custom: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))


class ChunkManifestRecord(Base):
    """The content-defined chunk manifest of one artifact (delta updates): its bytes, whose
    sha256 and length the artifact's signed target custom metadata carries."""

    __tablename__ = "chunk_manifests"

    artifact_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int]
    content: Mapped[bytes] = mapped_column(LargeBinary)
    cpu_seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime]


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_releases_name_version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    targets_version: Mapped[int]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    # "published", or "pending-signature" until the offline targets key signs it.
    state: Mapped[str] = mapped_column(String(32), default="published", server_default="published")

    members: Mapped[list[ReleaseArtifact]] = relationship(
        order_by="ReleaseArtifact.position", lazy="selectin"
    )


class ReleaseArtifact(Base):
    __tablename__ = "release_artifacts"

    release_id: Mapped[str] = mapped_column(String(64), ForeignKey("releases.id"), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("artifacts.id"), primary_key=True
    )
    position: Mapped[int]

    artifact: Mapped[Artifact] = relationship(lazy="selectin")


class AssignmentRecord(Base):
    __tablename__ = "assignments"
    __table_args__ = (
        UniqueConstraint("device_id", "version", name="uq_assignments_device_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    version: Mapped[int]
    release_id: Mapped[str] = mapped_column(String(64), ForeignKey("releases.id"))
    envelope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    issued_by: Mapped[str] = mapped_column(String(200))


class StatusReportRecord(Base):
    __tablename__ = "status_reports"
    __table_args__ = (
        Index("ix_status_reports_device_received", "device_id", "received_at"),
        Index("ix_status_reports_device_version", "device_id", "assignment_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(String(32), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    assignment_version: Mapped[int | None]
    release_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]
    received_at: Mapped[datetime]


class TufMetadataFile(Base):
    __tablename__ = "tuf_metadata"
    __table_args__ = (Index("ix_tuf_metadata_role_version", "role", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    file_name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    version: Mapped[int]
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class Rollout(Base):
    """A staged rollout of one release, or of one config patch, to a cohort (see
    ``control_plane.rollouts``)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="release", server_default="release")
    release_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("releases.id"))
    # a config rollout: the merge patch, and the scope it is folded into on completion
    config_patch: Mapped[dict[str, Any] | None]
    config_scope: Mapped[str | None] = mapped_column(String(200))
    cohort: Mapped[str] = mapped_column(String(500))
    # {"stages": [...], "gate": {...}, "stage_timeout_seconds": n, "manual_approval": b}
    plan: Mapped[dict[str, Any]]
    salt: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int]
    stage_started_at: Mapped[datetime]
    approved_stage: Mapped[int | None]
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]

    release: Mapped[Release | None] = relationship(lazy="selectin")


class RolloutDevice(Base):
    """A device this rollout moved: when, from which release, and what it reported."""

    __tablename__ = "rollout_devices"
    __table_args__ = (
        Index("ix_rollout_devices_device", "device_id"),
        Index("ix_rollout_devices_outcome", "rollout_id", "outcome"),
    )

    rollout_id: Mapped[str] = mapped_column(String(64), ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"), primary_key=True)
    bucket: Mapped[int]
    stage: Mapped[int]
    prior_release_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("releases.id"))
    assignment_version: Mapped[int]
    assigned_at: Mapped[datetime]
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_at: Mapped[datetime | None]
    detail: Mapped[str] = mapped_column(Text, default="")
    rollback_assignment_version: Mapped[int | None]


class RolloutEvent(Base):
    """What happened to a rollout, in order: created, advanced, halted, paused, ..."""

    __tablename__ = "rollout_events"
    __table_args__ = (Index("ix_rollout_events_rollout", "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(64), ForeignKey("rollouts.id"))
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    stage: Mapped[int]
    message: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]]


class CohortDefault(Base):
    """The release a cohort converges to once a rollout completed (newest row wins)."""

    __tablename__ = "cohort_defaults"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cohort: Mapped[str] = mapped_column(String(500))
    release_id: Mapped[str] = mapped_column(String(64), ForeignKey("releases.id"))
    rollout_id: Mapped[str] = mapped_column(String(64), ForeignKey("rollouts.id"))
    set_at: Mapped[datetime]


class RequestNonce(Base):
    """A signed device request's nonce, kept until the request could no longer be fresh."""

    __tablename__ = "request_nonces"
    __table_args__ = (Index("ix_request_nonces_expires", "expires_at"),)

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]


class ConfigLayer(Base):
    """One version of one remote-config scope (``fleet``, ``tag`` ``k=v``, ``device`` id):
    the layer's settings after the change, and the merge patch that made it."""

    __tablename__ = "config_layers"
    __table_args__ = (
        UniqueConstraint("scope", "key", "version", name="uq_config_layers_scope_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(16))
    key: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    settings: Mapped[dict[str, Any]]
    patch: Mapped[dict[str, Any]]
    changed_at: Mapped[datetime]
    changed_by: Mapped[str] = mapped_column(String(200))


class DeviceConfigRecord(Base):
    """A signed effective config issued to one device; ``version`` is monotonic per device."""

    __tablename__ = "device_configs"
    __table_args__ = (
        UniqueConstraint("device_id", "version", name="uq_device_configs_device_version"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    version: Mapped[int]
    settings: Mapped[dict[str, Any]]
    digest: Mapped[str] = mapped_column(String(64))
    envelope: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    issued_by: Mapped[str] = mapped_column(String(200))


class ConfigReportRecord(Base):
    """What a device did with one config version (applied, rejected, reverted)."""

    __tablename__ = "config_reports"
    __table_args__ = (Index("ix_config_reports_device_version", "device_id", "config_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(String(32), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    config_version: Mapped[int]
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]
    received_at: Mapped[datetime]


class AuditEntry(Base):
    """Append-only (triggers in the migration refuse UPDATE and DELETE)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]]


__all__ = [
    "ApiToken",
    "Artifact",
    "AssignmentRecord",
    "AuditEntry",
    "Base",
    "ChunkManifestRecord",
    "CohortDefault",
    "ConfigLayer",
    "ConfigReportRecord",
    "Device",
    "DeviceConfigRecord",
    "EnrollmentToken",
    "Release",
    "ReleaseArtifact",
    "RequestNonce",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "StatusReportRecord",
    "TufMetadataFile",
    "UTCDateTime",
]
