"""Telemetry reports from devices, their aggregates and the privacy budget spent (issue 9).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.storage.models import BigId, UTCDateTime

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_reports",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("report_id", sa.String(64), nullable=False, unique=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("release_id", sa.String(64), nullable=True),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("cohort", sa.String(500), nullable=False),
        sa.Column("period_start", UTCDateTime(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("aggregated_at", UTCDateTime(), nullable=True),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
    )
    op.create_index(
        "ix_telemetry_reports_device_received", "telemetry_reports", ["device_id", "received_at"]
    )
    op.create_index(
        "ix_telemetry_reports_release_end", "telemetry_reports", ["release_id", "period_end"]
    )
    op.create_index("ix_telemetry_reports_pending", "telemetry_reports", ["aggregated_at", "id"])
    op.create_index("ix_telemetry_reports_received", "telemetry_reports", ["received_at"])
    op.create_table(
        "telemetry_aggregates",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.String(64), nullable=False),
        sa.Column("cohort", sa.String(500), nullable=False),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("hour", UTCDateTime(), nullable=False),
        sa.Column("reports", sa.Integer(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint(
            "release_id", "cohort", "device_class", "hour", name="uq_telemetry_aggregates_key"
        ),
    )
    op.create_index("ix_telemetry_aggregates_hour", "telemetry_aggregates", ["hour"])


def downgrade() -> None:
    op.drop_index("ix_telemetry_aggregates_hour", table_name="telemetry_aggregates")
    op.drop_table("telemetry_aggregates")
    op.drop_index("ix_telemetry_reports_received", table_name="telemetry_reports")
    op.drop_index("ix_telemetry_reports_pending", table_name="telemetry_reports")
    op.drop_index("ix_telemetry_reports_release_end", table_name="telemetry_reports")
    op.drop_index("ix_telemetry_reports_device_received", table_name="telemetry_reports")
    op.drop_table("telemetry_reports")
