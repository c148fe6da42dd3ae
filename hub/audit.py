"""The audit log: who did what, written in the same transaction as the change it describes.

``actor`` is the person (their user name, from a dashboard session or a personal API token), a
service token's name, an agent id, ``cli:<os user>`` for the hub's local commands, ``config`` for the
first admin made from the config, ``retention`` for the retention policy, or ``engine`` for the hub's
own decisions (rollout advance, pause on errors, automatic rollback; training jobs failed for a
silent or restarted trainer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db.models import AuditEntry

ENGINE_ACTOR = "engine"


def record(s: Session, actor: str, action: str, subject: str, at: datetime, **details: Any) -> AuditEntry:
    """Add one audit entry to session ``s`` (committed with the caller's transaction)."""
    entry = AuditEntry(at=at, actor=actor[:64], action=action[:64], subject=subject[:256], details=details)
    s.add(entry)
    return entry


def recent(s: Session, limit: int, subject_prefix: str | None = None) -> list[AuditEntry]:
    """The newest ``limit`` entries, optionally only those whose subject starts with ``subject_prefix``."""
    q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if subject_prefix:
        q = q.where(AuditEntry.subject.startswith(subject_prefix, autoescape=True))
    return list(s.scalars(q))
