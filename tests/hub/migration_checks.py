"""Shared assertions for the Alembic tests on SQLite (tests/hub) and PostgreSQL (tests/integration)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from hub.db.migrate import current_revision, head_revision, upgrade
from hub.db.models import Base
from hub.db.session import Database

TABLES = {
    "agents",
    "classifications",
    "model_versions",
    "model_events",
    "alembic_version",
    "agent_tags",
    "lab_tags",
    "rollouts",
    "rollout_targets",
    "rollout_history",
    "audit_log",
    "training_jobs",
    "result_cells",
}


def check_upgrade_creates_schema(url: str) -> None:
    db = Database(url)
    try:
        assert current_revision(db) is None
        assert upgrade(db) == head_revision()
        assert set(inspect(db.engine).get_table_names()) >= TABLES
        # the migrations produce exactly what the models declare (no drift)
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == [], f"models and migrations differ: {diff}"
        assert upgrade(db) == head_revision()  # idempotent
    finally:
        db.dispose()
