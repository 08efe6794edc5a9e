"""Fixtures shared with the control-plane tests (an initialized control plane, on SQLite
or, for ``cp_any_db``, on SQLite and on PostgreSQL)."""

from tests.control_plane.conftest import cp, cp_any_db, database_url, postgres_url

__all__ = ["cp", "cp_any_db", "database_url", "postgres_url"]
