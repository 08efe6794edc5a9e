"""The agent's state database is schema-versioned: old ones upgrade in place, newer ones
are refused untouched, and every step lands once, in order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_agent.errors import StateDatabaseTooNewError
from edge_agent.store.release_store import ReleaseStore
from edge_agent.store.state_db import MIGRATIONS, SCHEMA_VERSION, StateDB

# The schema as the agent wrote it before versioning (user_version 0), with a row in each.
_UNVERSIONED = """
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE installs (
    install_id INTEGER PRIMARY KEY AUTOINCREMENT, assignment_version INTEGER NOT NULL,
    release_id TEXT NOT NULL, release_dir TEXT NOT NULL, step TEXT NOT NULL,
    manifest TEXT NOT NULL, prior_current TEXT, prior_previous TEXT,
    started_at TEXT NOT NULL, updated_at TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    install_id INTEGER NOT NULL REFERENCES installs(install_id),
    step TEXT NOT NULL, at TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, report_id TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL, queued_at TEXT NOT NULL, delivered_at TEXT);
INSERT INTO kv VALUES ('highest_assignment_version', '7');
INSERT INTO outbox(report_id, body, queued_at) VALUES ('r1', '{}', '2026-11-01T00:00:00');
"""


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        rows = c.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {str(r[0]) for r in rows}


def test_a_database_from_before_versioning_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as c:
        c.executescript(_UNVERSIONED)
    db = StateDB(path)
    assert db.schema_version() == SCHEMA_VERSION
    assert db.get("highest_assignment_version") == "7"
    assert db.pending_report_count() == 1
    db.close()
    assert {"telemetry_ledger", "telemetry_outbox", "telemetry_sent"} <= _tables(path)


def test_each_step_runs_once_and_in_order(tmp_path: Path) -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    path = tmp_path / "state.db"
    StateDB(path).close()
    # a second open applies nothing: a non-idempotent step (CREATE TABLE) would fail
    db = StateDB(path)
    assert db.schema_version() == SCHEMA_VERSION
    db.close()


def test_a_database_from_a_newer_agent_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    StateDB(path).close()
    with sqlite3.connect(path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(StateDatabaseTooNewError, match="newer than this agent's"):
        StateDB(path)
    assert path.read_bytes() == before
    # the store does not mistake it for corruption: nothing is moved aside or rebuilt
    with pytest.raises(StateDatabaseTooNewError):
        ReleaseStore.open(tmp_path)
    assert not list(tmp_path.glob("state.db.corrupt-*"))


def test_a_failing_step_leaves_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge_agent.store import state_db

    path = tmp_path / "state.db"
    broken = (*MIGRATIONS, state_db.Migration(SCHEMA_VERSION + 1, "broken", ("CREATE TABL x",)))
    monkeypatch.setattr(state_db, "MIGRATIONS", broken)
    monkeypatch.setattr(state_db, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(Exception, match="syntax error"):
        StateDB(path)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_the_epsilon_ledger_is_append_only(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    with db.transaction() as c:
        c.execute(
            "INSERT INTO telemetry_ledger(report_id, charged_at, period_start, epsilon,"
            " policy_digest) VALUES('r', 't', 'p', 0.5, 'd')"
        )
    for statement in ("UPDATE telemetry_ledger SET epsilon = 0", "DELETE FROM telemetry_ledger"):
        with pytest.raises(Exception, match="append-only"), db.transaction() as c:
            c.execute(statement)
    db.close()
