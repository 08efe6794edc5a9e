"""The fleet as operators see it: devices with their installed release and last report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from control_plane.errors import NotFoundError
from control_plane.rollouts.core import CohortSelector
from control_plane.storage.database import Database
from control_plane.storage.models import (
    AssignmentRecord,
    Device,
    Release,
    StatusReportRecord,
)


@dataclass(frozen=True)
class DeviceView:
    device: Device
    installed_release: Release | None
    assignment: AssignmentRecord | None
    last_status: StatusReportRecord | None


def device_views(session: Session, device_id: str | None = None) -> list[DeviceView]:
    """Every device (or one), each with its installed release, newest assignment and
    newest status report, in a fixed number of queries."""
    query = select(Device).order_by(Device.enrolled_at, Device.id)
    if device_id is not None:
        query = query.where(Device.id == device_id)
    devices: Sequence[Device] = session.scalars(query).all()
    if device_id is not None and not devices:
        raise NotFoundError(f"no device with id {device_id!r}")
    ids = [d.id for d in devices]
    release_ids = {d.installed_release_id for d in devices if d.installed_release_id}
    releases = {
        r.id: r for r in session.scalars(select(Release).where(Release.id.in_(release_ids)))
    }
    newest_assignment = (
        select(AssignmentRecord.device_id, func.max(AssignmentRecord.version).label("v"))
        .where(AssignmentRecord.device_id.in_(ids))
        .group_by(AssignmentRecord.device_id)
        .subquery()
    )
    assignments = {
        a.device_id: a
        for a in session.scalars(
            select(AssignmentRecord).join(
                newest_assignment,
                (AssignmentRecord.device_id == newest_assignment.c.device_id)
                & (AssignmentRecord.version == newest_assignment.c.v),
            )
        )
    }
    newest_report = (
        select(func.max(StatusReportRecord.id))
        .where(StatusReportRecord.device_id.in_(ids))
        .group_by(StatusReportRecord.device_id)
    )
    reports = {
        r.device_id: r
        for r in session.scalars(
            select(StatusReportRecord).where(StatusReportRecord.id.in_(newest_report))
        )
    }
    return [
        DeviceView(
            device=d,
            installed_release=releases.get(d.installed_release_id or ""),
            assignment=assignments.get(d.id),
            last_status=reports.get(d.id),
        )
        for d in devices
    ]


def public_key_of(session: Session, device_id: str) -> str | None:
    return session.scalars(select(Device.public_key_hex).where(Device.id == device_id)).first()


def mark_seen(session: Session, device_id: str, now: datetime) -> None:
    session.execute(update(Device).where(Device.id == device_id).values(last_seen_at=now))


def list_devices(
    db: Database, device_id: str | None = None, *, cohort: CohortSelector | None = None
) -> list[DeviceView]:
    """Every device (or one), or those a cohort selector matches (tags, hardware facts)."""
    with db.transaction() as session:
        views = device_views(session, device_id)
    if cohort is None:
        return views
    return [v for v in views if cohort.matches(v.device.tags, v.device.hardware)]


def record_seen(db: Database, device_id: str, now: datetime) -> None:
    with db.transaction() as session:
        mark_seen(session, device_id, now)
