"""Alembic on SQLite (PostgreSQL: tests/integration/test_hub_migrations.py)."""

from __future__ import annotations

from tests.hub.migration_checks import check_upgrade_creates_schema


def test_migration_creates_tables_on_sqlite(tmp_path):
    check_upgrade_creates_schema(f"sqlite:///{tmp_path / 'fresh' / 'hub.db'}")
