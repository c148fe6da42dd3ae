"""Alembic on SQLite (PostgreSQL: tests/integration/test_hub_migrations.py)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from hub.db.migrate import alembic_config, upgrade
from hub.db.session import Database
from tests.hub.migration_checks import check_upgrade_creates_schema


def test_migration_creates_tables_on_sqlite(tmp_path):
    check_upgrade_creates_schema(f"sqlite:///{tmp_path / 'fresh' / 'hub.db'}")


def _indexes(db: Database) -> set[tuple[str, tuple[str, ...]]]:
    return {(i["name"], tuple(i["column_names"])) for i in inspect(db.engine).get_indexes("classifications")}


def test_0006_replaces_the_results_indexes_and_downgrades(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        upgrade(db, "0005")
        old = {
            ("ix_classifications_captured_at", ("captured_at",)),
            ("ix_classifications_agent_captured", ("agent_id", "captured_at")),
            ("ix_classifications_label", ("label",)),
        }
        assert _indexes(db) == old
        upgrade(db, "0006")
        assert _indexes(db) == {
            ("ix_classifications_captured_id", ("captured_at", "id")),
            ("ix_classifications_agent_captured_id", ("agent_id", "captured_at", "id")),
            ("ix_classifications_label_captured_id", ("label", "captured_at", "id")),
        }
        cfg = alembic_config()
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        assert _indexes(db) == old
    finally:
        db.dispose()
