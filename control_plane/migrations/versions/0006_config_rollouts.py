"""Config rollouts: a rollout moves a release or a config patch (``kind``); a config
rollout has no release, and keeps its patch and the scope it is folded into.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="release"))
        batch.alter_column("release_id", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("config_patch", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("config_scope", sa.String(200), nullable=True))


def downgrade() -> None:
    op.execute(
        "DELETE FROM rollout_events WHERE rollout_id IN"
        " (SELECT id FROM rollouts WHERE kind = 'config')"
    )
    op.execute(
        "DELETE FROM rollout_devices WHERE rollout_id IN"
        " (SELECT id FROM rollouts WHERE kind = 'config')"
    )
    op.execute("DELETE FROM rollouts WHERE kind = 'config'")
    with op.batch_alter_table("rollouts") as batch:
        batch.drop_column("config_scope")
        batch.drop_column("config_patch")
        batch.alter_column("release_id", existing_type=sa.String(64), nullable=False)
        batch.drop_column("kind")
