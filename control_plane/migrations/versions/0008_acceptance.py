"""Device acceptance results per release and device class (issue 11).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.storage.models import BigId, UTCDateTime

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "acceptance_results",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("report_id", sa.String(32), nullable=False, unique=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("release_id", sa.String(64), nullable=False),
        sa.Column("assignment_version", sa.Integer(), nullable=True),
        sa.Column("device_class", sa.String(64), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("loadavg_1m", sa.Float(), nullable=True),
        sa.Column("temperature_c", sa.Float(), nullable=True),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
    )
    op.create_index(
        "ix_acceptance_results_release_class",
        "acceptance_results",
        ["release_id", "device_class", "id"],
    )
    op.create_index("ix_acceptance_results_device", "acceptance_results", ["device_id"])


def downgrade() -> None:
    op.drop_index("ix_acceptance_results_device", table_name="acceptance_results")
    op.drop_index("ix_acceptance_results_release_class", table_name="acceptance_results")
    op.drop_table("acceptance_results")
