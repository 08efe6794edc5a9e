"""Release state: published, or pending the offline targets signature.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column(
        "releases",
        sa.Column("state", sa.String(32), nullable=False, server_default="published"),
    )


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("state")
