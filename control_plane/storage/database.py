"""The database handle: engine, transactions, and programmatic Alembic migrations."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from control_plane.errors import ServiceUnavailableError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Arbitrary constant: the PostgreSQL advisory lock replicas take while migrating.
_MIGRATION_LOCK_ID = 0x6F757470

T = TypeVar("T")

# Waits between retries: full jitter over a doubling ceiling, so writers that collided
# spread out instead of colliding again in step.
_RETRY_FIRST_CEILING_S = 0.002
_RETRY_MAX_CEILING_S = 0.1


class ConcurrentUpdateError(Exception):
    """Another writer changed the row first; the transaction must be retried."""


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=15000")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def create_database_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (safe to call on every start)."""
    cfg = _alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def schema_is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    return current == head


class Database:
    """An engine and a session factory; ``transaction()`` is the unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer at a time anyway; taking turns inside this process keeps
        # a read-modify-write from losing its compare-and-swap to a sibling thread again
        # and again. Re-entrant, so a unit of work may call another.
        self._writer_turns = threading.RLock() if engine.dialect.name == "sqlite" else None

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(create_database_engine(url))

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside one transaction: committed on success, rolled back on error."""
        try:
            with self._sessions() as session, session.begin():
                yield session
        except OperationalError as e:
            raise ServiceUnavailableError(
                "the database is unavailable or busy; retry shortly"
            ) from e

    def writer_turn(self) -> AbstractContextManager[object]:
        """Held around a retried unit of work: this process's writers take turns on SQLite
        (a no-op on PostgreSQL, whose row locks and compare-and-swaps serialize them)."""
        return self._writer_turns if self._writer_turns is not None else nullcontext()

    def ping(self) -> None:
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except OperationalError as e:
            raise ServiceUnavailableError("the database does not answer") from e

    def dispose(self) -> None:
        self.engine.dispose()


def retrying(db: Database, work: Callable[[Session], T], *, attempts: int = 8) -> T:
    """Run ``work`` in a transaction, again on a fresh one when a concurrent writer won.

    ``work`` must re-read what it depends on; a unique-constraint violation or a failed
    compare-and-swap (:class:`ConcurrentUpdateError`) means "someone got there first".
    Between attempts it waits a random time under a doubling ceiling.
    """
    ceiling = _RETRY_FIRST_CEILING_S
    for attempt in range(attempts):
        if attempt:
            time.sleep(random.uniform(0, ceiling))
            ceiling = min(ceiling * 2, _RETRY_MAX_CEILING_S)
        try:
            with db.writer_turn(), db.transaction() as session:
                return work(session)
        except (IntegrityError, ConcurrentUpdateError):
            continue
    raise ServiceUnavailableError(
        f"the data kept changing concurrently ({attempts} attempts); retry shortly"
    )
