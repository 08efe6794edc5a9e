"""Install-status reports from devices: stored exactly once, by report id."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from control_plane.errors import NotFoundError, PermissionDeniedError
from control_plane.storage.database import Database
from control_plane.storage.models import Device, Release, StatusReportRecord
from protocol.messages import InstallState, StatusReport, StatusReportAck


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
    """Store ``report`` unless it was stored before; an "active" or "committed" report
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
