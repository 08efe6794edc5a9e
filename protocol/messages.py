"""Typed messages exchanged between agent and control plane (protocol v1)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from protocol.version import PROTOCOL_VERSION

ASSIGNMENT_PAYLOAD_TYPE = "application/vnd.outpost.assignment+json;v=1"

# Field of the TUF root metadata ("signed" part) that lists the director's keys.
# Anchoring them in root means the offline root key decides who may direct devices.
DIRECTOR_ROOT_FIELD = "x-outpost-director"

# What an artifact is for, and how it is stored.
ARTIFACT_KINDS = (
    "llm",
    "embedding",
    "vision-classify",
    "vision-detect",
    "rag-index",
    "config",
    "prompt-pack",
    "policy",
)
ARTIFACT_FORMATS = ("gguf", "onnx", "tflite", "mlpackage", "sqlite", "json")

ArtifactKind = Literal[
    "llm",
    "embedding",
    "vision-classify",
    "vision-detect",
    "rag-index",
    "config",
    "prompt-pack",
    "policy",
]
ArtifactFormat = Literal["gguf", "onnx", "tflite", "mlpackage", "sqlite", "json"]

# Integers on the wire fit the signed 64-bit columns they are stored in (and SQLite's
# integers): a larger value is a bad request, never an overflow inside the server.
INT64_MAX = 2**63 - 1

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TARGET_PATH = re.compile(r"^[0-9a-f]{64}/[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HardwareFacts(_Message):
    arch: str = Field(max_length=32)
    os: str = Field(max_length=32)
    cpu_count: int = Field(ge=1, le=4096)
    ram_mb: int = Field(ge=1, le=INT64_MAX)
    accelerators: list[str] = Field(default_factory=list, max_length=16)


class InstalledRelease(_Message):
    """What a device installed before it enrolled (from an offline bundle): the control
    plane adopts it, and numbers the device's next assignment above ``assignment_version``."""

    release_id: str = Field(min_length=1, max_length=64)
    assignment_version: int = Field(ge=1, le=INT64_MAX)


class EnrollRequest(_Message):
    """Sent once by a new device with its one-time enrollment token."""

    protocol_version: int = PROTOCOL_VERSION
    token: str = Field(min_length=16, max_length=256)
    device_public_key: str = Field(pattern=r"^[0-9a-f]{64}$", description="raw Ed25519, hex")
    name: str = Field(min_length=1, max_length=128)
    hardware: HardwareFacts
    tags: list[str] = Field(default_factory=list, max_length=32)
    installed: InstalledRelease | None = None


class EnrollResponse(_Message):
    device_id: str
    protocol_version: int = PROTOCOL_VERSION


class TargetRef(_Message):
    """One artifact of a release, pinned by TUF target path, hash and length."""

    name: str = Field(description="logical artifact name, e.g. the model id clients use")
    path: str = Field(description="TUF target path: '<sha256>/<file name>'")
    sha256: str
    length: int = Field(ge=1, le=INT64_MAX)
    kind: ArtifactKind
    format: ArtifactFormat

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("artifact name must be 1-128 of [A-Za-z0-9._-], starting alphanumeric")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha_ok(cls, v: str) -> str:
        if not _SHA256.match(v):
            raise ValueError("sha256 must be 64 lowercase hex characters")
        return v

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        if not _TARGET_PATH.match(v):
            raise ValueError("target path must be '<sha256>/<file name>'")
        return v


class Assignment(_Message):
    """The director's signed statement: this device should run this release.

    ``version`` is monotonic per device; an agent never accepts a lower one.
    """

    protocol_version: int = PROTOCOL_VERSION
    device_id: str
    version: int = Field(ge=1, le=INT64_MAX)
    release_id: str
    release_name: str
    release_version: str
    targets: list[TargetRef] = Field(min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    issued_at: datetime
    expires_at: datetime


class InstallState(StrEnum):
    """Where an install stands. ``active``: activated, in the health window;
    ``committed``: passed the on-device health window (the only success a rollout counts);
    ``rolled_back``: failed activation or health, the previous release serves again."""

    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    ACTIVE = "active"
    COMMITTED = "committed"
    FAILED = "failed"
    REFUSED = "refused"
    ROLLED_BACK = "rolled_back"


# Reports that end an install attempt: a rollout judges a device by the first of these.
FINAL_INSTALL_STATES = frozenset(
    {InstallState.COMMITTED, InstallState.FAILED, InstallState.REFUSED, InstallState.ROLLED_BACK}
)


AcceptanceStatus = Literal["pass", "fail", "inconclusive", "not_measured"]
_FiniteFloat = Field(default=None, allow_inf_nan=False)


class AcceptanceFigure(_Message):
    """One figure of an on-device acceptance check: measured ``value`` (p50/p95, or a
    single reading) with its bootstrap interval [``low``, ``high``] over ``n`` queries."""

    figure: str = Field(max_length=200)
    unit: str = Field(max_length=16)
    bound: Literal["max", "min"]
    threshold: float = Field(gt=0, allow_inf_nan=False)
    status: AcceptanceStatus
    value: float | None = _FiniteFloat
    low: float | None = _FiniteFloat
    high: float | None = _FiniteFloat
    n: int | None = Field(default=None, ge=0, le=1_000_000)


class AcceptanceResult(_Message):
    """What the release's acceptance check for this device's class measured in the health
    window (``passed``: every figure passed, or was not applicable)."""

    device_class: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    passed: bool
    figures: list[AcceptanceFigure] = Field(max_length=64)
    duration_s: float = Field(ge=0, le=86_400, allow_inf_nan=False)
    loadavg_1m: float | None = Field(default=None, ge=0, le=100_000, allow_inf_nan=False)
    temperature_c: float | None = Field(default=None, ge=-100, le=300, allow_inf_nan=False)


class AcceptanceReport(_Message):
    """A run of the acceptance suite on a device outside an install (``python -m
    device_tests run --report-to-control-plane``), about the release the device serves;
    sent signed by the device key. ``report_id`` makes delivery idempotent."""

    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    device_id: str = Field(max_length=64)
    release_id: str = Field(max_length=64)
    at: datetime
    profile: str = Field(max_length=64)
    workload_version: str = Field(max_length=32)
    result: AcceptanceResult


class AcceptanceReportAck(_Message):
    report_id: str
    duplicate: bool


class StatusReport(_Message):
    """An install-status report. ``report_id`` makes delivery idempotent."""

    report_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    device_id: str
    assignment_version: int | None = Field(default=None, ge=1, le=INT64_MAX)
    release_id: str | None = Field(default=None, max_length=64)
    state: InstallState
    detail: str = Field(default="", max_length=2000)
    at: datetime
    serving_release_id: str | None = Field(
        default=None,
        max_length=64,
        description="the release the device serves after this step (set on rolled_back)",
    )
    acceptance: AcceptanceResult | None = Field(
        default=None,
        description="the on-device acceptance check's numbers (on committed or rolled_back,"
        " when the release sets thresholds for this device's class)",
    )


class StatusReportAck(_Message):
    report_id: str
    duplicate: bool
