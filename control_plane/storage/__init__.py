"""Persistence: SQLAlchemy models, the database handle and its Alembic migrations."""

from control_plane.storage.database import Database, migrate
from control_plane.storage.models import (
    ApiToken,
    Artifact,
    AssignmentRecord,
    AuditEntry,
    Base,
    Device,
    EnrollmentToken,
    Release,
    ReleaseArtifact,
    StatusReportRecord,
    TufMetadataFile,
)

__all__ = [
    "ApiToken",
    "Artifact",
    "AssignmentRecord",
    "AuditEntry",
    "Base",
    "Database",
    "Device",
    "EnrollmentToken",
    "Release",
    "ReleaseArtifact",
    "StatusReportRecord",
    "TufMetadataFile",
    "migrate",
]
