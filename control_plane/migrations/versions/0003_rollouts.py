"""Staged rollouts: rollouts, the devices each moved, their events, cohort defaults.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.storage.models import BigId, UTCDateTime

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("cohort", sa.String(500), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("stage_started_at", UTCDateTime(), nullable=False),
        sa.Column("approved_stage", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state"])
    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id"), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), primary_key=True),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("prior_release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=True),
        sa.Column("assignment_version", sa.Integer(), nullable=False),
        sa.Column("assigned_at", UTCDateTime(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_at", UTCDateTime(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("rollback_assignment_version", sa.Integer(), nullable=True),
    )
    op.create_index("ix_rollout_devices_device", "rollout_devices", ["device_id"])
    op.create_index("ix_rollout_devices_outcome", "rollout_devices", ["rollout_id", "outcome"])
    op.create_table(
        "rollout_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id"), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("numbers", sa.JSON(), nullable=False),
    )
    op.create_index("ix_rollout_events_rollout", "rollout_events", ["rollout_id", "id"])
    op.create_table(
        "cohort_defaults",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("cohort", sa.String(500), nullable=False),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("rollout_id", sa.String(64), sa.ForeignKey("rollouts.id"), nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
    )
    # reports are matched to rollout devices by (device, assignment version)
    op.create_index(
        "ix_status_reports_device_version", "status_reports", ["device_id", "assignment_version"]
    )


def downgrade() -> None:
    op.drop_index("ix_status_reports_device_version", "status_reports")
    op.drop_table("cohort_defaults")
    op.drop_table("rollout_events")
    op.drop_table("rollout_devices")
    op.drop_table("rollouts")
