"""The evidence queue: images waiting for upload, in a SQLite file of their own beside the outbox.

:meth:`agents.outbox.Outbox.put_many` commits a batch's evidence here before its results (see
:mod:`agents.outbox` for why a file of its own), and :class:`agents.evidence.EvidenceUploader`
takes the oldest due row, deletes it once the hub has it, or makes it wait after a failure. Rows are
keyed by the image's sha256: the same image twice is kept once.

The queue has a cap of its own (``max_bytes``, the config's ``evidence.queue_max_mb``): past it the
oldest evidence is deleted, with a warning, in the transaction that went over. Results are never
affected. Every write is one ``BEGIN IMMEDIATE`` transaction (``synchronous=FULL``, WAL), and a write
the disk refuses raises :class:`agents.outbox.OutboxError`.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agents.outbox import sqlite_transaction
from shared.logs import kv

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evidence (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    content_type TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT ''
);
"""
_FULL_FIX = "free disk space on the state_dir volume"

EvidenceKind = Literal["original", "preview"]


@dataclass(frozen=True)
class Evidence:
    """The image a result was made from, as it will be uploaded (:class:`EvidenceMaker` makes it).

    ``sha256`` is the key: the result's ``image_sha256``. ``content_sha256`` is the digest of
    ``body`` (equal to ``sha256`` for an ``original``).
    """

    sha256: str
    kind: EvidenceKind
    content_type: str
    content_sha256: str
    body: bytes


@dataclass(frozen=True)
class EvidenceRow:
    """Queued :class:`Evidence`: its row number and the tries so far."""

    seq: int
    evidence: Evidence
    attempts: int


class EvidenceQueue:
    """Thread-safe evidence queue at ``path`` (created if needed), holding at most ``max_bytes``.

    Attributes:
        dropped, dropped_bytes: evidence deleted at the cap since start.
    """

    def __init__(self, path: Path, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.dropped_bytes = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        rows, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM evidence").fetchone()
        self._depth = (int(rows), int(size))

    def put_many(self, items: Sequence[Evidence]) -> tuple[int, int]:
        """Queue ``items`` in one transaction (a key already queued is kept once), then delete the
        oldest evidence past the cap; returns (rows, bytes) added.

        Raises:
            OutboxError: the database refused the write; nothing was stored.
        """
        now = time.time()
        added = dropped = (0, 0)
        with self._lock:
            with sqlite_transaction(
                self._db, self.path, f"cannot queue {len(items)} evidence image(s)", _FULL_FIX
            ):
                for e in items:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO evidence (sha256, kind, content_type, content_sha256, body, "
                        "size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (e.sha256, e.kind, e.content_type, e.content_sha256, e.body, len(e.body), now),
                    )
                    if cur.rowcount > 0:
                        added = (added[0] + 1, added[1] + len(e.body))
                dropped = self._over_cap(self._depth[1] + added[1])
            self._depth = (
                self._depth[0] + added[0] - dropped[0],
                self._depth[1] + added[1] - dropped[1],
            )
            self.dropped += dropped[0]
            self.dropped_bytes += dropped[1]
        if dropped[0]:
            log.warning(
                kv(
                    "evidence_dropped",
                    rows=dropped[0],
                    bytes=dropped[1],
                    cap_bytes=self.max_bytes,
                    reason="evidence queue full (evidence.queue_max_mb): the oldest images were not sent; "
                    "their results were",
                )
            )
        return added

    def _over_cap(self, total: int) -> tuple[int, int]:
        """Delete the oldest rows until ``total`` is within the cap (inside the caller's transaction)."""
        excess = total - self.max_bytes if self.max_bytes is not None else 0
        rows = size = 0
        while size < excess:
            oldest = self._db.execute("SELECT seq, size FROM evidence ORDER BY seq LIMIT 256").fetchall()
            if not oldest:
                break
            for seq, n in oldest:
                self._db.execute("DELETE FROM evidence WHERE seq = ?", (seq,))
                rows, size = rows + 1, size + int(n)
                if size >= excess:
                    break
        return rows, size

    def next_due(self, now: float, exclude: Collection[int] = ()) -> EvidenceRow | None:
        """The oldest evidence due for a try at ``now`` (wall-clock seconds), skipping ``exclude``."""
        skip = list(exclude)
        where = f" AND seq NOT IN ({','.join('?' * len(skip))})" if skip else ""  # placeholders only
        query = "SELECT seq, sha256, kind, content_type, content_sha256, body, attempts FROM evidence "
        query += f"WHERE next_try_at <= ?{where} ORDER BY seq LIMIT 1"
        with self._lock:
            r = self._db.execute(query, (now, *skip)).fetchone()
        if r is None:
            return None
        kind: EvidenceKind = "original" if r[2] == "original" else "preview"
        return EvidenceRow(int(r[0]), Evidence(str(r[1]), kind, str(r[3]), str(r[4]), bytes(r[5])), int(r[6]))

    def due_at(self) -> float | None:
        """When the next row is due (wall-clock seconds); None when the queue is empty."""
        with self._lock:
            (due,) = self._db.execute("SELECT MIN(next_try_at) FROM evidence").fetchone()
        return None if due is None else float(due)

    def done(self, seq: int) -> None:
        """Delete row ``seq``: the hub has it, or refused it for good.

        Raises:
            OutboxError: the database refused the write.
        """
        with self._lock:
            with sqlite_transaction(self._db, self.path, "cannot delete an uploaded evidence row"):
                r = self._db.execute("SELECT size FROM evidence WHERE seq = ?", (seq,)).fetchone()
                if r is not None:
                    self._db.execute("DELETE FROM evidence WHERE seq = ?", (seq,))
            if r is not None:
                self._depth = (self._depth[0] - 1, self._depth[1] - int(r[0]))

    def retry(self, seq: int, next_try_at: float, error: str) -> int:
        """Count a failed try of row ``seq`` and make it wait until ``next_try_at``; its tries so far.

        Raises:
            OutboxError: the database refused the write.
        """
        with self._lock, sqlite_transaction(self._db, self.path, "cannot record a failed evidence upload"):
            self._db.execute(
                "UPDATE evidence SET attempts = attempts + 1, next_try_at = ?, last_error = ? WHERE seq = ?",
                (next_try_at, error[:500], seq),
            )
            r = self._db.execute("SELECT attempts FROM evidence WHERE seq = ?", (seq,)).fetchone()
        return int(r[0]) if r else 0

    def clear(self) -> tuple[int, int]:
        """Delete every queued row (``evidence.mode: none``); (rows, bytes) deleted.

        Raises:
            OutboxError: the database refused the write.
        """
        with self._lock:
            with sqlite_transaction(self._db, self.path, "cannot delete queued evidence"):
                self._db.execute("DELETE FROM evidence")
            cleared, self._depth = self._depth, (0, 0)
        return cleared

    def depth(self) -> tuple[int, int]:
        """(rows, bytes) waiting for upload (kept in memory: cheap to ask often)."""
        with self._lock:
            return self._depth

    def close(self) -> None:
        with self._lock:
            self._db.close()
