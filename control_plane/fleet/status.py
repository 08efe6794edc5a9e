"""Install-status reports from devices: stored exactly once, by report id."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.errors import ConflictError, NotFoundError, PermissionDeniedError
from control_plane.releases.qualification import store_acceptance
from control_plane.storage.database import Database
from control_plane.storage.models import AssignmentRecord, Device, Release, StatusReportRecord
from protocol.messages import InstallState, StatusReport, StatusReportAck


class StatusReportRefusedError(ConflictError):
    """A device reported on an assignment the director never issued to it (a version it
    was never given, or a release that version does not name); nothing was stored."""

    error_type = "status_report_refused"


def _contradiction(session: Session, device_id: str, report: StatusReport) -> str | None:
    """Why ``report`` contradicts what the director issued to the device, or None.

    The assignment version must be one issued to this device, naming the reported
    release; without a version, a release that would become the installed one must have
    been assigned to the device at some version; so must a ``serving_release_id``.
    """
    assigned = select(AssignmentRecord).where(AssignmentRecord.device_id == device_id)
    if report.assignment_version is not None:
        record = session.scalars(
            assigned.where(AssignmentRecord.version == report.assignment_version)
        ).first()
        if record is None:
            return (
                f"assignment version {report.assignment_version} was never issued to device"
                f" {device_id!r}"
            )
        if report.release_id is not None and report.release_id != record.release_id:
            return (
                f"assignment version {report.assignment_version} of device {device_id!r}"
                f" names release {record.release_id!r}, not {report.release_id!r}"
            )
    elif (
        report.release_id is not None
        and report.state in (InstallState.ACTIVE, InstallState.COMMITTED)
        and not _was_assigned(session, device_id, report.release_id)
    ):
        return f"release {report.release_id!r} was never assigned to device {device_id!r}"
    serving = report.serving_release_id
    if (
        serving is not None
        and serving != report.release_id
        and not _was_assigned(session, device_id, serving)
    ):
        return f"release {serving!r} was never assigned to device {device_id!r}"
    return None


def _was_assigned(session: Session, device_id: str, release_id: str) -> bool:
    return (
        session.scalars(
            select(AssignmentRecord.id)
            .where(AssignmentRecord.device_id == device_id)
            .where(AssignmentRecord.release_id == release_id)
            .limit(1)
        ).first()
        is not None
    )


def _newer_or_equal(reported: int | None, installed: int | None) -> bool:
    return reported is None or installed is None or reported >= installed


_UNCHANGED = object()


def _serving_after(report: StatusReport, installed: str | None) -> object:
    """The release the device serves once this report's step is done (``None``: none),
    or ``_UNCHANGED`` when the report does not say."""
    if report.state in (InstallState.ACTIVE, InstallState.COMMITTED):
        return report.release_id
    if report.state in (InstallState.ROLLED_BACK, InstallState.FAILED):
        if report.serving_release_id is not None:
            return report.serving_release_id
        if report.state is InstallState.ROLLED_BACK and installed == report.release_id:
            return None  # a first release failed its health window: nothing serves
    return _UNCHANGED


def record_status(
    db: Database, signer: str, report: StatusReport, now: datetime
) -> StatusReportAck:
    """Store ``report`` unless it was stored before, and refuse it (409, nothing stored)
    when it contradicts the director's assignments; an "active" or "committed" report
    (or a "rolled_back"/"failed" one naming what serves now) moves the device's
    installed release (never back to an older assignment)."""
    if report.device_id != signer:
        raise PermissionDeniedError(
            f"the report is about device {report.device_id!r} but was signed by {signer!r};"
            " a device may only report about itself"
        )
    try:
        with db.transaction() as session:
            seen = session.scalars(
                select(StatusReportRecord.id).where(
                    StatusReportRecord.report_id == report.report_id
                )
            ).first()
            if seen is not None:
                return StatusReportAck(report_id=report.report_id, duplicate=True)
            device = session.get(Device, signer)
            if device is None:
                raise NotFoundError(f"no device with id {signer!r}")
            contradiction = _contradiction(session, signer, report)
            if contradiction is not None:
                raise StatusReportRefusedError(
                    f"status report refused: {contradiction}; the device's view was not"
                    " changed (a device reports only on assignments it was given)"
                )
            session.add(
                StatusReportRecord(
                    report_id=report.report_id,
                    device_id=signer,
                    assignment_version=report.assignment_version,
                    release_id=report.release_id,
                    state=report.state.value,
                    detail=report.detail,
                    at=report.at if report.at.tzinfo else report.at.replace(tzinfo=UTC),
                    received_at=now,
                )
            )
            store_acceptance(session, report, now)  # the on-device check's numbers, if any
            device.last_seen_at = now
            serving = _serving_after(report, device.installed_release_id)
            if (
                serving is not _UNCHANGED
                and (serving is None or session.get(Release, serving) is not None)
                and _newer_or_equal(report.assignment_version, device.installed_assignment_version)
            ):
                device.installed_release_id = serving if isinstance(serving, str) else None
                device.installed_assignment_version = report.assignment_version
            session.flush()
    except IntegrityError:  # the same report delivered twice at once: the other copy won
        return StatusReportAck(report_id=report.report_id, duplicate=True)
    return StatusReportAck(report_id=report.report_id, duplicate=False)
