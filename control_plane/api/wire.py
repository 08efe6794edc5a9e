"""Wire models of the operator API (``XCreate`` in, ``XPublic`` out).

Device-facing messages are not here: they are the shared contract in ``protocol``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.access.roles import Role
from control_plane.artifacts.service import target_custom
from control_plane.fleet.devices import DeviceView
from control_plane.storage.models import (
    ApiToken,
    Artifact,
    AssignmentRecord,
    AuditEntry,
    Release,
    StatusReportRecord,
)
from protocol.envelope import SignedEnvelope

Tag = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:=-]{0,63}$")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    pass


class ApiTokenCreate(_In):
    name: str = Field(min_length=1, max_length=128)
    role: Role


class ApiTokenCreated(_Out):
    id: str
    name: str
    role: Role
    created_at: datetime
    token: str = Field(description="shown once; only its hash is stored")

    @classmethod
    def of(cls, row: ApiToken, secret: str) -> ApiTokenCreated:
        return cls(
            id=row.id, name=row.name, role=Role(row.role), created_at=row.created_at, token=secret
        )


class ApiTokenPublic(_Out):
    """An API token as listed to admins: never its secret or hash."""

    id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> ApiTokenPublic:
        return cls(
            id=row.id,
            name=row.name,
            role=Role(row.role),
            created_at=row.created_at,
            created_by=row.created_by,
            revoked_at=row.revoked_at,
        )


class EnrollmentTokenCreate(_In):
    expires_in_seconds: int = Field(default=3600, ge=60, le=30 * 86_400)
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class EnrollmentTokenCreated(_Out):
    id: str
    token: str = Field(description="one-time; shown once; only its hash is stored")
    expires_at: datetime
    tags: list[str]


class ArtifactPublic(_Out):
    id: str
    name: str
    sha256: str
    length: int
    kind: str
    format: str
    target_path: str
    custom: dict[str, Any] = Field(description="the TUF target's custom field")
    created_at: datetime

    @classmethod
    def of(cls, a: Artifact) -> ArtifactPublic:
        return cls(
            id=a.id,
            name=a.name,
            sha256=a.sha256,
            length=a.length,
            kind=a.kind,
            format=a.format,
            target_path=a.target_path,
            custom=target_custom(a),
            created_at=a.created_at,
        )


class ReleaseCreate(_In):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    artifacts: list[str] = Field(min_length=1, max_length=64, description="artifact ids")
    config: dict[str, Any] = Field(default_factory=dict)


class ReleaseDownload(_Out):
    """What a device on an earlier release downloads for this one (delta updates)."""

    release_id: str
    release: str = Field(description="name@version of the earlier release")
    devices: int = Field(description="devices that last reported running it")
    download_bytes: int = Field(description="bytes such a device fetches (chunk manifests too)")
    full_bytes: int = Field(description="bytes of all this release's artifacts")


class ReleasePublic(_Out):
    id: str
    name: str
    version: str
    config: dict[str, Any]
    targets_version: int = Field(
        description="TUF targets version that first lists all its artifacts"
        " (the expected one while pending-signature)"
    )
    state: str = Field(
        description="published, or pending-signature until the offline targets key signs it"
    )
    created_at: datetime
    artifacts: list[ArtifactPublic]
    downloads: list[ReleaseDownload] | None = Field(
        default=None,
        description="per earlier release devices run: bytes a device on it downloads"
        " (only when one release is shown)",
    )

    @classmethod
    def of(cls, r: Release) -> ReleasePublic:
        return cls(
            id=r.id,
            name=r.name,
            version=r.version,
            config=r.config,
            targets_version=r.targets_version,
            state=r.state,
            created_at=r.created_at,
            artifacts=[ArtifactPublic.of(m.artifact) for m in r.members],
        )


class AssignmentCreate(_In):
    release_id: str = Field(min_length=1, max_length=64)


class AssignmentPublic(_Out):
    device_id: str
    version: int
    release_id: str
    issued_at: datetime
    expires_at: datetime
    envelope: SignedEnvelope

    @classmethod
    def of(cls, a: AssignmentRecord) -> AssignmentPublic:
        return cls(
            device_id=a.device_id,
            version=a.version,
            release_id=a.release_id,
            issued_at=a.issued_at,
            expires_at=a.expires_at,
            envelope=SignedEnvelope.model_validate_json(a.envelope),
        )


class ReleaseRef(_Out):
    id: str
    name: str
    version: str


class AssignmentSummary(_Out):
    version: int
    release_id: str
    issued_at: datetime
    expires_at: datetime


class StatusPublic(_Out):
    report_id: str
    state: str
    detail: str
    release_id: str | None
    assignment_version: int | None
    at: datetime
    received_at: datetime

    @classmethod
    def of(cls, s: StatusReportRecord) -> StatusPublic:
        return cls(
            report_id=s.report_id,
            state=s.state,
            detail=s.detail,
            release_id=s.release_id,
            assignment_version=s.assignment_version,
            at=s.at,
            received_at=s.received_at,
        )


class DevicePublic(_Out):
    id: str
    name: str
    public_key: str
    hardware: dict[str, Any]
    tags: list[str]
    enrolled_at: datetime
    last_seen_at: datetime | None
    installed_release: ReleaseRef | None
    installed_assignment_version: int | None
    assignment: AssignmentSummary | None = Field(description="the newest signed assignment")
    last_status: StatusPublic | None

    @classmethod
    def of(cls, view: DeviceView) -> DevicePublic:
        d, r, a, s = view.device, view.installed_release, view.assignment, view.last_status
        return cls(
            id=d.id,
            name=d.name,
            public_key=d.public_key_hex,
            hardware=d.hardware,
            tags=d.tags,
            enrolled_at=d.enrolled_at,
            last_seen_at=d.last_seen_at,
            installed_release=None
            if r is None
            else ReleaseRef(id=r.id, name=r.name, version=r.version),
            installed_assignment_version=d.installed_assignment_version,
            assignment=None
            if a is None
            else AssignmentSummary(
                version=a.version,
                release_id=a.release_id,
                issued_at=a.issued_at,
                expires_at=a.expires_at,
            ),
            last_status=None if s is None else StatusPublic.of(s),
        )


class DeviceTagsPatch(_In):
    """Tag edits: ``add`` sets ``key=value`` (replacing the key's value), ``remove`` drops
    ``key=value`` or every tag of ``key``. Rules: ``control_plane.fleet.tags``."""

    add: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=32)
    remove: list[Annotated[str, Field(max_length=200)]] = Field(default_factory=list, max_length=32)


class AuditEntryPublic(_Out):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    @classmethod
    def of(cls, e: AuditEntry) -> AuditEntryPublic:
        return cls(
            id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, details=e.details
        )


class Health(_Out):
    status: str
    protocol_version: int


class PendingTargetsPublic(_Out):
    version: int = Field(description="the targets version this metadata becomes once signed")
    metadata: dict[str, Any] = Field(description="unsigned TUF targets metadata to sign as is")
    releases: list[ReleaseRef] = Field(description="releases published by signing it")


class SignedTargetsAcceptedPublic(_Out):
    targets_version: int
    published: list[ReleaseRef]
