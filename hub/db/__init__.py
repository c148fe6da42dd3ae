"""Persistence: typed SQLAlchemy 2 models, the per-app :class:`Database`, Alembic upgrades."""

from hub.db.models import (
    Agent,
    AgentTag,
    AuditEntry,
    Base,
    Classification,
    LabTag,
    ModelEventRecord,
    ModelVersion,
    Rollout,
    RolloutHistory,
    RolloutTarget,
)
from hub.db.session import Database

__all__ = [
    "Agent",
    "AgentTag",
    "AuditEntry",
    "Base",
    "Classification",
    "Database",
    "LabTag",
    "ModelEventRecord",
    "ModelVersion",
    "Rollout",
    "RolloutHistory",
    "RolloutTarget",
]
