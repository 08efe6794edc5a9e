"""Migration 0006 on a database that already holds rollouts (SQLite rebuilds the rollouts
table, whose rows other tables point at; PostgreSQL alters it in place): nothing is lost,
no foreign key breaks, and it downgrades and upgrades again."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import Engine, text

from control_plane.storage.database import _alembic_config, create_database_engine, migrate
from tests.control_plane.conftest import database_url, postgres_url

__all__ = ["database_url", "postgres_url"]

ROWS = [
    "INSERT INTO releases VALUES"
    " ('rel_1', 'kiosk', '1.0', '{}', 1, '2026-01-01', 'x', 'published')",
    "INSERT INTO devices (id, name, public_key_hex, hardware, tags, enrolled_at)"
    " VALUES ('dev_1', 'd', '00', '{}', '[]', '2026-01-01')",
    "INSERT INTO rollouts (id, release_id, cohort, plan, salt, state, stage, stage_started_at,"
    " reason, created_at, created_by, updated_at) VALUES ('ro_1', 'rel_1', '*', '{}', 's',"
    " 'completed', 0, '2026-01-01', '', '2026-01-01', 'x', '2026-01-01')",
    "INSERT INTO rollout_devices (rollout_id, device_id, bucket, stage, assignment_version,"
    " assigned_at, outcome, detail) VALUES ('ro_1', 'dev_1', 1, 0, 1, '2026-01-01',"
    " 'committed', '')",
    "INSERT INTO rollout_events (rollout_id, at, actor, kind, stage, message, numbers)"
    " VALUES ('ro_1', '2026-01-01', 'x', 'created', 0, 'm', '{}')",
    "INSERT INTO cohort_defaults (cohort, release_id, rollout_id, set_at)"
    " VALUES ('*', 'rel_1', 'ro_1', '2026-01-01')",
]


def _to(engine: Engine, revision: str, *, down: bool = False) -> None:
    cfg = _alembic_config()
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _counts(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as c:
        return (
            c.execute(text("SELECT id, release_id, cohort, state FROM rollouts")).all(),
            c.execute(text("SELECT count(*) FROM rollout_devices")).scalar(),
            c.execute(text("SELECT count(*) FROM rollout_events")).scalar(),
            c.execute(text("SELECT count(*) FROM cohort_defaults")).scalar(),
        )


def test_0006_keeps_existing_rollouts_and_their_rows_and_downgrades(
    tmp_path: Path, database_url: str | None
) -> None:
    engine = create_database_engine(database_url or f"sqlite:///{tmp_path / 'cp.db'}")
    _to(engine, "0005")
    with engine.begin() as c:
        for row in ROWS:
            c.execute(text(row))
    before = _counts(engine)
    migrate(engine)
    assert _counts(engine) == before
    with engine.connect() as c:
        assert c.execute(text("SELECT kind, config_patch FROM rollouts")).all() == [
            ("release", None)
        ]
        if engine.dialect.name == "sqlite":
            assert c.execute(text("PRAGMA foreign_key_check")).all() == []
            tables = c.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
            assert not [t for (t,) in tables if t.startswith("_")]
    _to(engine, "0005", down=True)
    assert _counts(engine) == before
    migrate(engine)
    assert _counts(engine) == before
    engine.dispose()
