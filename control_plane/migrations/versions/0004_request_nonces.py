"""Request nonces: each signed device request's nonce, kept until its clock window ends.

A replayed request (same device, same nonce) hits the unique key and is refused; every
replica on one PostgreSQL shares the table. Expired rows are pruned by the server.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.storage.models import UTCDateTime

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "request_nonces",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_request_nonces_expires", "request_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_request_nonces_expires", "request_nonces")
    op.drop_table("request_nonces")
