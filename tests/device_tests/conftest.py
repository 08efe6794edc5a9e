"""The real-process fixtures of tests/e2e (control plane on SQLite and PostgreSQL)."""

from tests.e2e.conftest import control_plane, fresh_postgres_database

__all__ = ["control_plane", "fresh_postgres_database"]
