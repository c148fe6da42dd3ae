"""The declarative base every table derives from; ``Base.metadata`` is what Alembic migrations must match.

A module of its own so the table modules (:mod:`hub.db.models`, :mod:`hub.db.results`) share it
without importing each other.
"""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base; ``Base.metadata`` is what Alembic migrations must match."""
