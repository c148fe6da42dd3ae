"""Thread-safe ingest counters, shown by ``/healthz``, ``GET /api/v1/ingest/stats`` and ``/metrics``.

Besides the counters, three latency histograms (Prometheus client objects that belong to no
registry; ``/metrics`` exposes them through a collector of its own): a batch from its first message
to its PUBACKs (``batch_seconds``), the database commit alone (``commit_seconds``), and each stored
result's lag, receipt minus ``captured_at`` (``lag_seconds``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from prometheus_client import Histogram

from shared.loops import Loops

#: bucket edges (seconds) of the batch and commit histograms
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: bucket edges (seconds) of the lag histogram: from live (under a second) to an outbox drained after a day
LAG_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 6 * 3600.0, 86400.0)


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
        self.batch_seconds = Histogram(
            "leukonet_ingest_batch_seconds",
            "Time from a batch's first message to its acknowledgements",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.commit_seconds = Histogram(
            "leukonet_ingest_commit_seconds",
            "Time of one batch's database transaction",
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.lag_seconds = Histogram(
            "leukonet_ingest_lag_seconds",
            "Receipt time minus captured_at of each stored result",
            buckets=LAG_BUCKETS,
            registry=None,
        )

    def add(self, **increments: int) -> None:
        """Add to named counters, e.g. ``add(stored=3, duplicates=1)``."""
        with self._lock:
            for name, n in increments.items():
                setattr(self, name, getattr(self, name) + n)

    def add_received(self) -> None:
        """One message more from the broker (paho's thread: the cheapest counter)."""
        with self._lock:
            self.received += 1

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

    def observe_batch(self, batch_s: float, commit_s: float, lags: Iterable[float]) -> None:
        """Time one acknowledged batch: first message to PUBACKs, its transaction, and the lag of each
        result it stored (a negative lag, an agent clock ahead of the hub's, counts as 0)."""
        self.batch_seconds.observe(batch_s)
        self.commit_seconds.observe(commit_s)
        observe = self.lag_seconds.observe
        for lag in lags:
            observe(lag if lag > 0.0 else 0.0)

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
