"""Telemetry tables (migration 0007): raw reports, kept for a retention window, and the
hourly aggregates per release x cohort x device class, kept much longer."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.storage.models import Base, BigId


class TelemetryReportRecord(Base):
    """One device report, stored exactly once by ``report_id``; ``aggregated_at`` is set
    when the aggregator has folded it into its hour."""

    __tablename__ = "telemetry_reports"
    __table_args__ = (
        Index("ix_telemetry_reports_device_received", "device_id", "received_at"),
        Index("ix_telemetry_reports_release_end", "release_id", "period_end"),
        Index("ix_telemetry_reports_pending", "aggregated_at", "id"),
        Index("ix_telemetry_reports_received", "received_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), ForeignKey("devices.id"))
    release_id: Mapped[str | None] = mapped_column(String(64))
    device_class: Mapped[str] = mapped_column(String(64))
    cohort: Mapped[str] = mapped_column(String(500))
    period_start: Mapped[datetime]
    period_end: Mapped[datetime]
    received_at: Mapped[datetime]
    aggregated_at: Mapped[datetime | None]
    facts: Mapped[dict[str, Any]]  # ReportFacts as JSON: what the estimates read
    body: Mapped[dict[str, Any]]  # the report as the device sent it (for audits)


class TelemetryAggregateRecord(Base):
    """Summed facts of the reports whose period ended in ``hour`` (UTC), per release x
    cohort x device class (``control_plane.telemetry.aggregation.Aggregate`` as JSON)."""

    __tablename__ = "telemetry_aggregates"
    __table_args__ = (
        UniqueConstraint(
            "release_id", "cohort", "device_class", "hour", name="uq_telemetry_aggregates_key"
        ),
        Index("ix_telemetry_aggregates_hour", "hour"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    release_id: Mapped[str] = mapped_column(String(64))  # "" when the device ran none
    cohort: Mapped[str] = mapped_column(String(500))
    device_class: Mapped[str] = mapped_column(String(64))
    hour: Mapped[datetime]
    reports: Mapped[int]
    devices: Mapped[int]  # distinct devices that reported in this hour
    data: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime]
