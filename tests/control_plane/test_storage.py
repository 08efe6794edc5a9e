"""The data layer on SQLite and PostgreSQL: schema, constraints, append-only audit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.repository.metadata_store import read_file, save_files
from control_plane.storage import AuditEntry, Base, Database, EnrollmentToken, migrate
from control_plane.storage.database import ConcurrentUpdateError, retrying, schema_is_current


@pytest.fixture
def db(tmp_path: Path, database_url: str | None) -> Iterator[Database]:
    database = Database.from_url(database_url or f"sqlite:///{tmp_path / 'cp.db'}")
    migrate(database.engine)
    yield database
    database.dispose()


def test_migration_builds_exactly_the_models(db: Database) -> None:
    with db.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert schema_is_current(db.engine)


def test_migrating_twice_is_harmless(db: Database) -> None:
    migrate(db.engine)
    assert schema_is_current(db.engine)


def test_audit_log_refuses_update_and_delete(db: Database) -> None:
    now = datetime.now(UTC)
    with db.transaction() as session:
        audit.record(session, actor="me", action="test.act", target="x", now=now, details={"a": 1})
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as connection:
        connection.execute(update(AuditEntry).values(actor="someone else"))
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_log"))
    with db.transaction() as session:
        (entry,) = session.scalars(select(AuditEntry)).all()
    assert (entry.actor, entry.details) == ("me", {"a": 1})


def test_datetimes_come_back_as_utc(db: Database) -> None:
    local = datetime(2026, 1, 2, 12, 0, tzinfo=UTC).astimezone(timezone(timedelta(hours=5)))
    with db.transaction() as session:
        audit.record(session, actor="me", action="t", target="x", now=local)
    with db.transaction() as session:
        stored = session.scalars(select(AuditEntry.at)).one()
    assert stored == datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert stored.tzinfo is UTC


def test_token_hashes_are_unique(db: Database) -> None:
    now = datetime.now(UTC)

    def token(i: str) -> EnrollmentToken:
        return EnrollmentToken(
            id=i, token_hash="f" * 64, tags=[], created_at=now, created_by="t", expires_at=now
        )

    with db.transaction() as session:
        session.add(token("a"))
    with pytest.raises(IntegrityError), db.transaction() as session:
        session.add(token("b"))


def test_retrying_reruns_work_that_lost_a_race(db: Database) -> None:
    calls: list[int] = []

    def work(_session: object) -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConcurrentUpdateError
        return "done"

    assert retrying(db, work) == "done"  # type: ignore[arg-type]
    assert len(calls) == 3


def test_timestamp_swap_fails_when_another_writer_moved_it(db: Database) -> None:
    """The compare-and-swap that keeps a stale writer from replacing a newer timestamp."""
    now = datetime.now(UTC)
    with db.transaction() as session:
        save_files(
            session,
            {"1.snapshot.json": b"s1", "timestamp.json": b"t1"},
            timestamp_version=1,
            previous_timestamp_version=None,
            now=now,
        )
    with db.transaction() as session:  # writer A: 1 -> 2
        save_files(
            session,
            {"timestamp.json": b"t2"},
            timestamp_version=2,
            previous_timestamp_version=1,
            now=now,
        )
    with pytest.raises(ConcurrentUpdateError), db.transaction() as session:  # writer B read 1 too
        save_files(
            session,
            {"2.snapshot.json": b"s2", "timestamp.json": b"t2-b"},
            timestamp_version=2,
            previous_timestamp_version=1,
            now=now,
        )
    with db.transaction() as session:
        assert read_file(session, "timestamp.json") == b"t2"
        assert read_file(session, "2.snapshot.json") is None  # B's insert rolled back too


def test_sqlite_writers_in_one_process_take_turns_so_none_loses_its_swap(tmp_path: Path) -> None:
    """Eight threads read a counter, pause, and compare-and-swap it, with one attempt each:
    on SQLite they take turns, so no swap fails and no increment is lost."""
    db = Database.from_url(f"sqlite:///{tmp_path / 'turns.db'}")
    with db.transaction() as session:
        session.execute(text("CREATE TABLE counter (n INTEGER NOT NULL)"))
        session.execute(text("INSERT INTO counter VALUES (0)"))

    def increment(session: Session) -> None:
        seen = session.execute(text("SELECT n FROM counter")).scalar_one()
        time.sleep(0.002)  # wide enough for a sibling to read the same value
        swapped = session.execute(
            text("UPDATE counter SET n = :new WHERE n = :seen"), {"new": seen + 1, "seen": seen}
        )
        if swapped.rowcount != 1:  # type: ignore[attr-defined]
            raise ConcurrentUpdateError

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: retrying(db, increment, attempts=1), range(48)))
    with db.transaction() as session:
        assert session.execute(text("SELECT n FROM counter")).scalar_one() == 48
    db.dispose()
