"""Acceptance results per release x device class, and what they qualify.

A device whose release sets acceptance thresholds for its class measures them in its
health window and sends the numbers inside its signed status report (``committed`` or
``rolled_back``). :func:`store_acceptance` keeps one row per such report (migration 0008);
:func:`qualification` says what the devices of a class have reported for a release (the
latest result per device), which ``outpost-cp release qualify`` and
``GET /api/v1/releases/{ref}/qualification`` show; a rollout may require it before it
starts, and :func:`rollout_acceptance_signals` feeds the ``acceptance_pass_rate`` gate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from control_plane.errors import ConflictError, NotFoundError, PermissionDeniedError
from control_plane.releases.service import get_release_by_ref
from control_plane.storage.database import Database
from control_plane.storage.models import Base, BigId, Device, Release, Rollout, RolloutDevice
from protocol.messages import (
    AcceptanceReport,
    AcceptanceReportAck,
    AcceptanceResult,
    StatusReport,
)

__all__ = [
    "QUALIFYING_PASS_RATE",
    "SIGNALS_KEY",
    "AcceptanceRecord",
    "DeviceResult",
    "Qualification",
    "ReleaseNotQualifiedError",
    "qualification",
    "record_acceptance_report",
    "release_qualification",
    "require_qualified",
    "rollout_acceptance_signals",
    "store_acceptance",
]

QUALIFYING_PASS_RATE = 0.95  # of the devices of the class that reported, by latest result
SIGNALS_KEY = "acceptance"


class ReleaseNotQualifiedError(ConflictError):
    """A rollout requires qualification for a device class the release does not have yet."""

    error_type = "release_not_qualified"


class AcceptanceRecord(Base):
    """One device's acceptance check of one release, as its signed status report said."""

    __tablename__ = "acceptance_results"
    __table_args__ = (
        Index("ix_acceptance_results_release_class", "release_id", "device_class", "id"),
        Index("ix_acceptance_results_device", "device_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(String(32), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    release_id: Mapped[str] = mapped_column(String(64))
    assignment_version: Mapped[int | None]
    device_class: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))  # committed / rolled_back / suite
    passed: Mapped[bool]
    duration_s: Mapped[float] = mapped_column(Float)
    loadavg_1m: Mapped[float | None] = mapped_column(Float)
    temperature_c: Mapped[float | None] = mapped_column(Float)
    figures: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    at: Mapped[datetime]
    received_at: Mapped[datetime]


SUITE_STATE = "suite"  # a row from a suite run outside an install (not a status report)


def record_acceptance_report(
    db: Database, signer: str, report: AcceptanceReport, now: datetime
) -> AcceptanceReportAck:
    """Store a suite run's numbers once, about the release the device serves now; a
    report about another device, or another release, is refused (nothing stored)."""
    if report.device_id != signer:
        raise PermissionDeniedError(
            f"the report is about device {report.device_id!r} but was signed by {signer!r};"
            " a device may only report about itself"
        )
    at = report.at if report.at.tzinfo else report.at.replace(tzinfo=UTC)
    try:
        with db.transaction() as session:
            seen = session.scalars(
                select(AcceptanceRecord.id).where(AcceptanceRecord.report_id == report.report_id)
            ).first()
            if seen is not None:
                return AcceptanceReportAck(report_id=report.report_id, duplicate=True)
            device = session.get(Device, signer)
            if device is None:
                raise NotFoundError(f"no device with id {signer!r}")
            if device.installed_release_id != report.release_id:
                raise ConflictError(
                    f"acceptance report refused: it is about release {report.release_id!r},"
                    f" but this device serves {device.installed_release_id!r} as far as the"
                    " control plane knows (run the suite against the release the device"
                    " committed)"
                )
            _add(session, report.report_id, signer, report.release_id, None, SUITE_STATE,
                 report.result, at, now)  # fmt: skip
            session.flush()
    except IntegrityError:  # the same report twice at once: the other copy won
        return AcceptanceReportAck(report_id=report.report_id, duplicate=True)
    return AcceptanceReportAck(report_id=report.report_id, duplicate=False)


def _add(
    session: Session,
    report_id: str,
    device_id: str,
    release_id: str,
    assignment_version: int | None,
    state: str,
    result: AcceptanceResult,
    at: datetime,
    now: datetime,
) -> None:
    session.add(
        AcceptanceRecord(
            report_id=report_id,
            device_id=device_id,
            release_id=release_id,
            assignment_version=assignment_version,
            device_class=result.device_class,
            state=state,
            passed=result.passed,
            duration_s=result.duration_s,
            loadavg_1m=result.loadavg_1m,
            temperature_c=result.temperature_c,
            figures=[f.model_dump(mode="json") for f in result.figures],
            at=at,
            received_at=now,
        )
    )


def store_acceptance(session: Session, report: StatusReport, now: datetime) -> None:
    """Keep the acceptance block of a status report being stored (same transaction)."""
    result = report.acceptance
    if result is None or report.release_id is None:
        return
    at = report.at if report.at.tzinfo else report.at.replace(tzinfo=UTC)
    _add(session, report.report_id, report.device_id, report.release_id,
         report.assignment_version, report.state.value, result, at, now)  # fmt: skip


@dataclass(frozen=True)
class DeviceResult:
    device_id: str
    passed: bool
    state: str
    at: datetime
    duration_s: float
    loadavg_1m: float | None
    temperature_c: float | None
    figures: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "passed": self.passed,
            "state": self.state,
            "at": self.at.isoformat(),
            "duration_s": self.duration_s,
            "loadavg_1m": self.loadavg_1m,
            "temperature_c": self.temperature_c,
            "figures": self.figures,
        }


@dataclass(frozen=True)
class Qualification:
    """What devices of ``device_class`` reported for a release (latest result each).
    ``qualified``: at least one passed and at least 95% of those that reported passed."""

    release_id: str
    release: str  # name@version
    device_class: str
    devices: list[DeviceResult] = field(default_factory=list)

    @property
    def reported(self) -> int:
        return len(self.devices)

    @property
    def passed(self) -> int:
        return sum(1 for d in self.devices if d.passed)

    @property
    def pass_rate(self) -> float | None:
        return None if not self.devices else self.passed / self.reported

    @property
    def qualified(self) -> bool:
        rate = self.pass_rate
        return self.passed >= 1 and rate is not None and rate >= QUALIFYING_PASS_RATE

    def summary(self) -> str:
        if not self.devices:
            return (
                f"{self.release}: no device of class {self.device_class} has reported an"
                " acceptance check yet"
            )
        return (
            f"{self.release} on {self.device_class}: {self.passed} of {self.reported} devices"
            f" passed ({(self.pass_rate or 0) * 100:.0f}%):"
            f" {'qualified' if self.qualified else 'not qualified'}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "release_id": self.release_id,
            "release": self.release,
            "device_class": self.device_class,
            "reported": self.reported,
            "passed": self.passed,
            "pass_rate": self.pass_rate,
            "qualified": self.qualified,
            "summary": self.summary(),
            "devices": [d.as_json() for d in self.devices],
        }


def qualification(session: Session, release: Release, device_class: str) -> Qualification:
    rows = session.scalars(
        select(AcceptanceRecord)
        .where(
            AcceptanceRecord.release_id == release.id,
            AcceptanceRecord.device_class == device_class,
        )
        .order_by(AcceptanceRecord.id)
    ).all()
    latest = {row.device_id: row for row in rows}  # later rows win
    return Qualification(
        release_id=release.id,
        release=f"{release.name}@{release.version}",
        device_class=device_class,
        devices=[
            DeviceResult(
                r.device_id,
                r.passed,
                r.state,
                r.at,
                r.duration_s,
                r.loadavg_1m,
                r.temperature_c,
                list(r.figures),
            )
            for r in sorted(latest.values(), key=lambda r: r.device_id)
        ],
    )


def release_qualification(db: Database, ref: str, device_class: str) -> Qualification:
    """The qualification of a release by id or ``name@version`` (404 when there is none)."""
    with db.transaction() as session:
        return qualification(session, get_release_by_ref(session, ref), device_class)


def require_qualified(session: Session, release: Release, device_class: str) -> None:
    """Refuse (409) a rollout of ``release`` that requires qualification on ``device_class``
    until devices of that class have reported passing acceptance checks."""
    found = qualification(session, release, device_class)
    if not found.qualified:
        raise ReleaseNotQualifiedError(
            f"require_qualification: {found.summary()}; a rollout that requires it starts once"
            f" devices of class {device_class} report a passing acceptance check: assign the"
            " release to a device of the class first (docs/device-tests.md, Qualification)"
        )


def rollout_acceptance_signals(session: Session, rollout: Rollout) -> dict[str, Any]:
    """``StageCounts.signals["acceptance"]`` for the ``acceptance_pass_rate`` gate: the
    latest acceptance result of each device this rollout moved, on its release."""
    if rollout.release_id is None:
        return {}
    rows = session.execute(
        select(AcceptanceRecord.device_id, AcceptanceRecord.passed)
        .join(
            RolloutDevice,
            (RolloutDevice.device_id == AcceptanceRecord.device_id)
            & (RolloutDevice.rollout_id == rollout.id),
        )
        .where(AcceptanceRecord.release_id == rollout.release_id)
        .order_by(AcceptanceRecord.id)
    ).all()
    latest = {device_id: passed for device_id, passed in rows}
    return {SIGNALS_KEY: {"reported": len(latest), "passed": sum(1 for p in latest.values() if p)}}
