"""The agent's SQLite state database: key-value state, the install journal, the outbox,
the telemetry ledger and outbox.

The schema is versioned (``PRAGMA user_version``) and grows by :data:`MIGRATIONS`, ordered
steps applied once each on open: an older database is upgraded in place, one written by a
newer agent is refused with :class:`StateDatabaseTooNewError` and left untouched.

stdlib ``sqlite3`` in WAL mode with ``synchronous=FULL``: a committed journal step
survives a power cut. One connection, guarded by a lock, shared by the agent's threads.

Opening checks the file (``PRAGMA quick_check``): a corrupt database raises
:class:`StateDatabaseCorruptError` (the store moves it aside and starts anew); a write
that fails for lack of space or a read-only filesystem raises
:class:`StoreUnwritableError` and is remembered in :attr:`StateDB.write_error` until a
later write succeeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from edge_agent.errors import (
    StateDatabaseCorruptError,
    StateDatabaseTooNewError,
    StoreError,
    StoreUnwritableError,
)

STORE_RUNBOOK = "docs/runbooks/agent-store-recovery.md"
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


@dataclass(frozen=True)
class Migration:
    """One step of the state database's schema: applied once, in order, in one
    transaction that also sets ``PRAGMA user_version`` to :attr:`version`."""

    version: int
    summary: str
    statements: tuple[str, ...]


# Append a step to change the schema; never edit a released one (devices have applied it).
# Version 1 is the schema from before versioning (every statement IF NOT EXISTS), so a
# database written by an agent that knew no versions is upgraded in place.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "key-value state, install journal, status-report outbox",
        (
            """CREATE TABLE IF NOT EXISTS kv (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS installs (
                install_id INTEGER PRIMARY KEY AUTOINCREMENT,
                assignment_version INTEGER NOT NULL,
                release_id TEXT NOT NULL,
                release_dir TEXT NOT NULL,
                step TEXT NOT NULL,
                manifest TEXT NOT NULL,
                prior_current TEXT,
                prior_previous TEXT,
                started_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE IF NOT EXISTS journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                install_id INTEGER NOT NULL REFERENCES installs(install_id),
                step TEXT NOT NULL,
                at TEXT NOT NULL,
                detail TEXT NOT NULL DEFAULT ''
            )""",
            """CREATE TABLE IF NOT EXISTS outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                report_id TEXT NOT NULL UNIQUE,
                body TEXT NOT NULL,
                queued_at TEXT NOT NULL,
                delivered_at TEXT
            )""",
        ),
    ),
    Migration(
        2,
        "telemetry: append-only epsilon ledger, telemetry outbox, sent history",
        (
            """CREATE TABLE telemetry_ledger (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                report_id TEXT NOT NULL,
                charged_at TEXT NOT NULL,
                period_start TEXT NOT NULL,
                epsilon REAL NOT NULL CHECK (epsilon >= 0),
                policy_digest TEXT NOT NULL
            )""",
            "CREATE INDEX telemetry_ledger_period ON telemetry_ledger(period_start)",
            """CREATE TRIGGER telemetry_ledger_no_update BEFORE UPDATE ON telemetry_ledger
            BEGIN SELECT RAISE(ABORT, 'the epsilon ledger is append-only'); END""",
            """CREATE TRIGGER telemetry_ledger_no_delete BEFORE DELETE ON telemetry_ledger
            BEGIN SELECT RAISE(ABORT, 'the epsilon ledger is append-only'); END""",
            """CREATE TABLE telemetry_outbox (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                report_id TEXT NOT NULL UNIQUE,
                body TEXT NOT NULL,
                size INTEGER NOT NULL,
                carried_drops INTEGER NOT NULL,
                queued_at TEXT NOT NULL
            )""",
            """CREATE TABLE telemetry_sent (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                report_id TEXT NOT NULL UNIQUE,
                body TEXT NOT NULL,
                queued_at TEXT NOT NULL,
                sent_at TEXT NOT NULL,
                outcome TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "delta updates: the chunk list of each verified blob, computed once",
        (
            """CREATE TABLE blob_chunks (
                sha256 TEXT NOT NULL,
                params TEXT NOT NULL,
                manifest BLOB NOT NULL,
                PRIMARY KEY (sha256, params)
            )""",
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class InstallStep(StrEnum):
    """Where an install is. The first five are unfinished: recovery must act on them.

    ``ACTIVE`` is the committed install (it passed the health window)."""

    DOWNLOADING = "downloading"
    VERIFIED = "verified"
    STAGED = "staged"
    ACTIVATING = "activating"
    HEALTH_CHECK = "health_check"  # activated; its health window has not passed yet
    ACTIVE = "active"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


UNFINISHED_STEPS = (
    InstallStep.DOWNLOADING,
    InstallStep.VERIFIED,
    InstallStep.STAGED,
    InstallStep.ACTIVATING,
    InstallStep.HEALTH_CHECK,
)


@dataclass(frozen=True)
class InstallRecord:
    install_id: int
    assignment_version: int
    release_id: str
    release_dir: str
    step: InstallStep
    manifest: dict[str, Any]
    prior_current: str | None
    prior_previous: str | None
    detail: str


@dataclass(frozen=True)
class QueuedReport:
    report_id: str
    body: str


class StateDB:
    """Typed access to ``state.db``. Every write is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.write_error: str | None = None  # why the last write failed; None once one works
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            problems = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise StateDatabaseCorruptError(
                    f"state database {path} is corrupt ({'; '.join(problems)})"
                )
            migrate(conn, path)
        except (sqlite3.Error, StateDatabaseCorruptError, StateDatabaseTooNewError) as e:
            if conn is not None:
                conn.close()
            if isinstance(e, StateDatabaseCorruptError | StateDatabaseTooNewError):
                raise
            if _is_corruption(e):
                raise StateDatabaseCorruptError(f"state database {path} is corrupt ({e})") from e
            raise StoreUnwritableError(
                f"state database {path} cannot be opened for writing ({e}{_filesystem_hint(path)});"
                f" see {STORE_RUNBOOK}"
            ) from e
        self._conn = conn
        self._lock = threading.RLock()

    @staticmethod
    def peek_unfinished(path: Path) -> InstallRecord | None:
        """The unfinished install recorded in ``path``, read without writing anything; None
        if there is none or the database cannot even be read."""
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        except sqlite3.Error:
            return None
        try:
            return StateDB._unfinished(conn)
        except (sqlite3.Error, ValueError):
            return None
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection for reads by a typed table adapter (no write lock is taken, so
        it also works on a database that cannot be written)."""
        with self._lock:
            yield self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction for a typed table adapter (e.g. the telemetry
        ledger and outbox, which must change together); failures map like every write."""
        with self._transaction() as c:
            yield c

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as e:
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise self._write_failed(e) from e
                raise
            self.write_error = None

    def _write_failed(self, e: sqlite3.Error) -> StoreError:
        if _is_corruption(e):
            return StateDatabaseCorruptError(
                f"state database {self.path} is corrupt ({e}); restart the agent to rebuild"
                f" it (see {STORE_RUNBOOK})"
            )
        self.write_error = f"state database cannot be written ({e}{_filesystem_hint(self.path)})"
        return StoreUnwritableError(
            f"{self.write_error}; the device keeps serving its verified release and retries"
            f" (see {STORE_RUNBOOK})"
        )

    # --- key-value -------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        with self._transaction() as c:
            c.execute(
                "INSERT INTO kv(key, value) VALUES(?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def delete_prefix(self, prefix: str) -> None:
        with self._transaction() as c:
            c.execute("DELETE FROM kv WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))

    # --- chunk lists of verified blobs (delta updates) -----------------------------------

    def blob_chunks(self, sha256: str, params: str) -> bytes | None:
        """The encoded chunk manifest of blob ``sha256`` under chunking ``params``, if kept."""
        with self._lock:
            row = self._conn.execute(
                "SELECT manifest FROM blob_chunks WHERE sha256 = ? AND params = ?",
                (sha256, params),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_blob_chunks(self, sha256: str, params: str, manifest: bytes) -> None:
        with self._transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO blob_chunks(sha256, params, manifest) VALUES(?, ?, ?)",
                (sha256, params, manifest),
            )

    def prune_blob_chunks(self, keep: set[str]) -> None:
        """Forget the chunk lists of blobs that are gone."""
        with self._transaction() as c:
            known = [str(r[0]) for r in c.execute("SELECT DISTINCT sha256 FROM blob_chunks")]
            gone = [(sha,) for sha in known if sha not in keep]
            if gone:
                c.executemany("DELETE FROM blob_chunks WHERE sha256 = ?", gone)

    # --- install journal ---------------------------------------------------------------

    def begin_install(
        self,
        *,
        assignment_version: int,
        release_id: str,
        release_dir: str,
        manifest: dict[str, Any],
        now: datetime,
    ) -> InstallRecord:
        """A new install row in DOWNLOADING, or the unfinished one for the same version."""
        with self._transaction() as c:
            existing = self._unfinished(c)
            if existing is not None and existing.assignment_version == assignment_version:
                return existing
            if existing is not None:
                self._set_step(c, existing.install_id, InstallStep.INTERRUPTED, now, "superseded")
            cur = c.execute(
                "INSERT INTO installs(assignment_version, release_id, release_dir, step,"
                " manifest, started_at, updated_at) VALUES(?, ?, ?, ?, ?, ?, ?)",
                (
                    assignment_version,
                    release_id,
                    release_dir,
                    InstallStep.DOWNLOADING.value,
                    json.dumps(manifest, sort_keys=True),
                    now.isoformat(),
                    now.isoformat(),
                ),
            )
            install_id = int(cur.lastrowid or 0)
            c.execute(
                "INSERT INTO journal(install_id, step, at) VALUES(?, ?, ?)",
                (install_id, InstallStep.DOWNLOADING.value, now.isoformat()),
            )
            record = self._install(c, install_id)
        if record is None:
            raise StoreError(f"install {install_id} vanished inside its own transaction")
        return record

    def set_step(
        self,
        install_id: int,
        step: InstallStep,
        now: datetime,
        detail: str = "",
        *,
        prior_pointers: tuple[str | None, str | None] | None = None,
    ) -> None:
        """Move an install to ``step`` and journal it (one transaction)."""
        with self._transaction() as c:
            self._set_step(c, install_id, step, now, detail, prior_pointers)

    def unfinished_install(self) -> InstallRecord | None:
        with self._lock:
            return self._unfinished(self._conn)

    def install(self, install_id: int) -> InstallRecord | None:
        with self._lock:
            return self._install(self._conn, install_id)

    def installs_of(self, assignment_version: int) -> list[InstallRecord]:
        """Every install attempt of one assignment version, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT install_id FROM installs WHERE assignment_version = ? ORDER BY install_id",
                (assignment_version,),
            ).fetchall()
            found = [self._install(self._conn, int(r[0])) for r in rows]
        return [r for r in found if r is not None]

    def journal_steps(self, install_id: int) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT step FROM journal WHERE install_id = ? ORDER BY seq", (install_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def activation_attempts(self, assignment_version: int) -> int:
        """How often activation of ``assignment_version`` started (crashes included)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM journal j JOIN installs i USING(install_id)"
                " WHERE i.assignment_version = ? AND j.step = ?",
                (assignment_version, InstallStep.ACTIVATING.value),
            ).fetchone()
        return int(row[0])

    def _set_step(
        self,
        c: sqlite3.Connection,
        install_id: int,
        step: InstallStep,
        now: datetime,
        detail: str,
        prior_pointers: tuple[str | None, str | None] | None = None,
    ) -> None:
        if prior_pointers is None:
            c.execute(
                "UPDATE installs SET step = ?, updated_at = ?, detail = ? WHERE install_id = ?",
                (step.value, now.isoformat(), detail, install_id),
            )
        else:
            c.execute(
                "UPDATE installs SET step = ?, updated_at = ?, detail = ?, prior_current = ?,"
                " prior_previous = ? WHERE install_id = ?",
                (step.value, now.isoformat(), detail, *prior_pointers, install_id),
            )
        c.execute(
            "INSERT INTO journal(install_id, step, at, detail) VALUES(?, ?, ?, ?)",
            (install_id, step.value, now.isoformat(), detail),
        )

    @staticmethod
    def _unfinished(c: sqlite3.Connection) -> InstallRecord | None:
        marks = ",".join("?" for _ in UNFINISHED_STEPS)
        row = c.execute(
            f"SELECT install_id FROM installs WHERE step IN ({marks})"
            " ORDER BY install_id DESC LIMIT 1",
            [s.value for s in UNFINISHED_STEPS],
        ).fetchone()
        return None if row is None else StateDB._install(c, int(row[0]))

    @staticmethod
    def _install(c: sqlite3.Connection, install_id: int) -> InstallRecord | None:
        row = c.execute(
            "SELECT install_id, assignment_version, release_id, release_dir, step, manifest,"
            " prior_current, prior_previous, detail FROM installs WHERE install_id = ?",
            (install_id,),
        ).fetchone()
        if row is None:
            return None
        return InstallRecord(
            install_id=int(row[0]),
            assignment_version=int(row[1]),
            release_id=str(row[2]),
            release_dir=str(row[3]),
            step=InstallStep(row[4]),
            manifest=json.loads(row[5]),
            prior_current=row[6],
            prior_previous=row[7],
            detail=str(row[8]),
        )

    # --- status-report outbox ----------------------------------------------------------

    def enqueue_report(self, report_id: str, body: str, now: datetime, *, max_pending: int) -> int:
        """Queue a report; drop the oldest pending ones beyond ``max_pending``.

        Returns how many old reports were dropped.
        """
        with self._transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO outbox(report_id, body, queued_at) VALUES(?, ?, ?)",
                (report_id, body, now.isoformat()),
            )
            pending = int(
                c.execute("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL").fetchone()[0]
            )
            excess = max(0, pending - max_pending)
            if excess:
                c.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox"
                    " WHERE delivered_at IS NULL ORDER BY seq LIMIT ?)",
                    (excess,),
                )
            return excess

    def pending_reports(self, limit: int) -> Sequence[QueuedReport]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT report_id, body FROM outbox WHERE delivered_at IS NULL"
                " ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [QueuedReport(str(r[0]), str(r[1])) for r in rows]

    def mark_delivered(self, report_id: str, now: datetime) -> None:
        with self._transaction() as c:
            c.execute(
                "UPDATE outbox SET delivered_at = ? WHERE report_id = ?",
                (now.isoformat(), report_id),
            )
            # keep a short delivered history for diagnosis, not forever
            c.execute(
                "DELETE FROM outbox WHERE delivered_at IS NOT NULL AND seq NOT IN"
                " (SELECT seq FROM outbox WHERE delivered_at IS NOT NULL"
                " ORDER BY seq DESC LIMIT 200)"
            )

    def pending_report_count(self) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"
            ).fetchone()
        return int(row[0])


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring ``conn``'s schema to :data:`SCHEMA_VERSION`, each step in its own transaction;
    returns the version it found. A database from a newer agent is refused, untouched."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise StateDatabaseTooNewError(
            f"state database {path} has schema version {found}, newer than this agent's"
            f" {SCHEMA_VERSION}: it was written by a newer agent. Install that agent version"
            f" again (or newer); the database is left as it is (see {STORE_RUNBOOK})"
        )
    for step in MIGRATIONS:
        if step.version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in step.statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return found


def _is_corruption(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT_CODES


def _filesystem_hint(path: Path) -> str:
    """Why the filesystem under ``path`` refuses writes, when it is plain to see."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    if st.f_flag & os.ST_RDONLY:
        return ": the filesystem is mounted read-only"
    if st.f_bavail * st.f_frsize < (1 << 20):
        return f": the disk is full, {st.f_bavail * st.f_frsize} bytes free"
    return ""
