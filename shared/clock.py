"""The one source of "now" for every role: timezone-aware UTC. Components that need to be driven by
tests take a :data:`Clock` argument defaulting to :func:`utcnow`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (never a naive datetime)."""
    return datetime.now(timezone.utc)
