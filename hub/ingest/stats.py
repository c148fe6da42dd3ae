"""Thread-safe ingest counters, shown by ``/healthz`` and ``GET /api/v1/ingest/stats``."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from shared.loops import Loops


class IngestStats:
    """Counters of one ingest worker: received, stored, duplicates, invalid per reason, ..."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.stored = 0
        self.duplicates = 0
        self.statuses = 0
        self.events = 0
        self.batches = 0
        self.db_errors = 0
        self.invalid: Counter[str] = Counter()
        self.connected = False
        self.running = False
        self.last_commit_at: datetime | None = None
        self.reconcile_errors = 0
        #: liveness of the worker's loops: ``ingest-mqtt`` (paho's network thread), ``ingest-writer``
        self.loops = Loops()

    def add(self, **increments: int) -> None:
        """Add to named counters, e.g. ``add(stored=3, duplicates=1)``."""
        with self._lock:
            for name, n in increments.items():
                setattr(self, name, getattr(self, name) + n)

    def add_invalid(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.invalid[reason] += n

    def committed(self, stored: int, duplicates: int, statuses: int, events: int) -> None:
        with self._lock:
            self.stored += stored
            self.duplicates += duplicates
            self.statuses += statuses
            self.events += events
            self.batches += 1
            self.last_commit_at = datetime.now(timezone.utc)

    def set_flags(self, *, connected: bool | None = None, running: bool | None = None) -> None:
        with self._lock:
            if connected is not None:
                self.connected = connected
            if running is not None:
                self.running = running

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every counter."""
        with self._lock:
            return {
                "running": self.running,
                "connected": self.connected,
                "received": self.received,
                "stored": self.stored,
                "duplicates": self.duplicates,
                "statuses": self.statuses,
                "events": self.events,
                "batches": self.batches,
                "db_errors": self.db_errors,
                "invalid": dict(self.invalid),
                "invalid_total": sum(self.invalid.values()),
                "last_commit_at": self.last_commit_at.isoformat() if self.last_commit_at else None,
                "reconcile_errors": self.reconcile_errors,
                "loops": self.loops.snapshot(),
            }
