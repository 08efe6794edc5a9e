"""Initial schema.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from control_plane.storage.models import UTCDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        _when("created_at"),
        sa.Column("created_by", sa.String(200), nullable=False),
        _when("revoked_at", nullable=True),
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.String(200), nullable=False),
        _when("expires_at"),
        _when("used_at", nullable=True),
    )
    op.create_table(
        "artifacts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("target_path", sa.String(200), nullable=False, unique=True),
        sa.Column("custom", sa.JSON(), nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_table(
        "releases",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("targets_version", sa.Integer(), nullable=False),
        _when("created_at"),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_releases_name_version"),
    )
    op.create_table(
        "release_artifacts",
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), primary_key=True),
        sa.Column("artifact_id", sa.String(64), sa.ForeignKey("artifacts.id"), primary_key=True),
        sa.Column("position", sa.Integer(), nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("public_key_hex", sa.String(64), nullable=False, unique=True),
        sa.Column("hardware", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        _when("enrolled_at"),
        _when("last_seen_at", nullable=True),
        sa.Column(
            "installed_release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=True
        ),
        sa.Column("installed_assignment_version", sa.Integer(), nullable=True),
        sa.Column(
            "enrollment_token_id",
            sa.String(64),
            sa.ForeignKey("enrollment_tokens.id"),
            nullable=True,
        ),
    )
    op.create_table(
        "assignments",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.String(64), sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("envelope", sa.Text(), nullable=False),
        _when("issued_at"),
        _when("expires_at"),
        sa.Column("issued_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("device_id", "version", name="uq_assignments_device_version"),
    )
    op.create_table(
        "status_reports",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("report_id", sa.String(32), nullable=False, unique=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("assignment_version", sa.Integer(), nullable=True),
        sa.Column("release_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        _when("at"),
        _when("received_at"),
    )
    op.create_index(
        "ix_status_reports_device_received", "status_reports", ["device_id", "received_at"]
    )
    op.create_table(
        "tuf_metadata",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("file_name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        _when("created_at"),
    )
    op.create_index("ix_tuf_metadata_role_version", "tuf_metadata", ["role", "version"])
    op.create_table(
        "audit_log",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        _when("at"),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    _make_audit_log_append_only()


def _make_audit_log_append_only() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            "CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table in (
        "audit_log",
        "tuf_metadata",
        "status_reports",
        "assignments",
        "devices",
        "release_artifacts",
        "releases",
        "artifacts",
        "enrollment_tokens",
        "api_tokens",
    ):
        op.drop_table(table)
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
