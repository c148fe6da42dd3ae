"""Persistence: typed SQLAlchemy 2 models, the per-app :class:`Database`, Alembic upgrades."""

from hub.db.models import Agent, Base, Classification, ModelEventRecord, ModelVersion
from hub.db.session import Database

__all__ = ["Agent", "Base", "Classification", "Database", "ModelEventRecord", "ModelVersion"]
