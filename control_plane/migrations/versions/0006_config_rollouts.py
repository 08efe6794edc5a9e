"""Config rollouts: a rollout moves a release or a config patch (``kind``); a config
rollout has no release, and keeps its patch and the scope it is folded into.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

# the tables whose rows point at rollouts.id
_CHILDREN = ("rollout_devices", "rollout_events", "cohort_defaults")


@contextmanager
def _children_set_aside() -> Iterator[None]:
    """SQLite changes a column's nullability by rebuilding the table (copy, drop, rename),
    and with foreign keys on (they cannot be turned off inside the migration's
    transaction) the drop fails while rows point at it. So the rows that point at
    rollouts wait in copies meanwhile and come back unchanged. PostgreSQL alters in place."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        for table in _CHILDREN:
            op.execute(f"CREATE TABLE _aside_{table} AS SELECT * FROM {table}")
            op.execute(f"DELETE FROM {table}")
    yield
    if sqlite:
        for table in _CHILDREN:
            op.execute(f"INSERT INTO {table} SELECT * FROM _aside_{table}")
            op.execute(f"DROP TABLE _aside_{table}")


def upgrade() -> None:
    with _children_set_aside(), op.batch_alter_table("rollouts") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="release"))
        batch.alter_column("release_id", existing_type=sa.String(64), nullable=True)
        batch.add_column(sa.Column("config_patch", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("config_scope", sa.String(200), nullable=True))


def downgrade() -> None:
    config = "SELECT id FROM rollouts WHERE kind = 'config'"
    for table in _CHILDREN:
        op.execute(f"DELETE FROM {table} WHERE rollout_id IN ({config})")
    op.execute("DELETE FROM rollouts WHERE kind = 'config'")
    with _children_set_aside(), op.batch_alter_table("rollouts") as batch:
        batch.drop_column("config_scope")
        batch.drop_column("config_patch")
        batch.alter_column("release_id", existing_type=sa.String(64), nullable=False)
        batch.drop_column("kind")
