"""Alembic through its Python API, with the ``Config`` built in code (no alembic.ini at run time)."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hub.db.session import Database
from shared.logs import kv

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at ``hub/migrations``; the database is passed per call."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def upgrade(database: Database, revision: str = "head") -> str | None:
    """Upgrade ``database`` to ``revision`` (default head). Returns the revision it is at afterwards."""
    cfg = alembic_config()
    with database.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    current = current_revision(database)
    log.info(kv("migrated", revision=current, dialect=database.dialect))
    return current


def current_revision(database: Database) -> str | None:
    """The revision stamped in ``database`` (None for an empty database)."""
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
