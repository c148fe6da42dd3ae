"""The on-disk outbox: results survive broker outages and agent restarts.

paho-mqtt keeps unacknowledged messages in memory only, so every result is first committed to a
SQLite database (WAL mode) and deleted only when the broker's PUBACK for it arrives. A fresh
process re-publishes every row still present, oldest first; the hub drops duplicates by result id.

The same database journals *pending moves*: a result and the source file it came from are
committed in one transaction, and the file's journal entry is cleared only after the file has
been moved to ``done``. If the agent dies in between, the next start finishes the move instead of
classifying the image again.

Writes are grouped: :meth:`Outbox.put_many` commits a batch of results in one transaction (one
fsync), which is what lets the outbox keep up with an accelerator. A write the disk refuses (full,
read-only) raises :class:`OutboxError`; nothing of that batch is stored and the caller keeps the
images for later.

The *evidence* of those results (the images, :mod:`agents.evidence`) goes through the outbox too:
``put_many(..., evidence=...)`` commits it to the outbox's evidence queue (a SQLite file of its own
beside this one, :class:`agents.evidence.EvidenceQueue`) *before* the results. Images are large (an
original field is megabytes): in their own file, with their own lock, writing them never holds up
the MQTT pump, which reads and deletes result rows here. Evidence first means a committed result
always has its evidence; a crash between the two leaves evidence whose image is classified again
at the next start, under the same key (the queue keeps one row per key).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared.schemas import ClassificationResult
from shared.topics import Kind, build

if TYPE_CHECKING:  # agents.evidence imports this module at run time
    from agents.evidence import Evidence, EvidenceQueue

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_moves (
    source TEXT PRIMARY KEY,
    image_sha256 TEXT NOT NULL,
    result_id TEXT NOT NULL
);
"""
_MAX_SEQ = 2**63 - 1  # SQLite's largest integer: "no upper bound" for :meth:`Outbox.after`


class OutboxError(RuntimeError):
    """The outbox could not store results (disk full, I/O error); nothing of the batch was stored."""


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    result_id: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class PendingMove:
    source: Path
    image_sha256: str
    result_id: str


@contextlib.contextmanager
def sqlite_transaction(db: sqlite3.Connection, path: Path, what: str, fix: str = "") -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on ``db`` (the database at ``path``), rolled back on any
    error; sqlite errors become :class:`OutboxError` naming ``path``, ``what`` failed and the ``fix``.
    """
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise OutboxError(f"outbox {path}: {what}: {exc}" + (f"; {fix}" if fix else "")) from exc


class Outbox:
    """Thread-safe SQLite outbox at ``path`` (created if needed). Close it with :meth:`close`.

    Args:
        path: the results database.
        evidence_queue: where ``put_many(..., evidence=...)`` stores evidence; closed with the outbox.
    """

    def __init__(self, path: Path, evidence_queue: EvidenceQueue | None = None) -> None:
        self.path = Path(path)
        self.evidence_queue = evidence_queue
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed result must survive power loss
        self._db.executescript(_SCHEMA)
        (n,) = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
        self._depth = int(n)

    def put(self, result: ClassificationResult, source: Path | None = None) -> int:
        """Commit ``result`` (and the pending move of ``source``) durably; return its sequence number.

        Raises:
            OutboxError: the database refused the write; nothing was stored.
        """
        return self.put_many([(result, source)])[0]

    def put_many(
        self,
        items: list[tuple[ClassificationResult, Path | None]],
        evidence: Sequence[Evidence | None] | None = None,
    ) -> list[int]:
        """Commit every result (and the pending move of its source file) in one transaction, after
        the ``evidence`` of those results (Nones skipped) in the evidence queue's.

        Returns the sequence numbers in the order of ``items``.

        Raises:
            OutboxError: a database refused the write (e.g. disk full); no result was stored (evidence
                stored before the results failed stays: its images are classified again, same keys).
            ValueError: evidence given to an outbox built without an evidence queue.
        """
        if not items:
            return []
        queued = [e for e in evidence or () if e is not None]
        if queued:
            if self.evidence_queue is None:
                raise ValueError(
                    "this outbox has no evidence queue: build it with Outbox(path, evidence_queue=...)"
                )
            self.evidence_queue.put_many(queued)
        now = time.time()
        seqs: list[int] = []
        fix = "free disk space on the state_dir volume (images stay in the watch folder)"
        with self._lock:
            with self._transaction(f"cannot store {len(items)} result(s)", fix):
                for result, source in items:
                    cur = self._db.execute(
                        "INSERT INTO outbox (result_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                        (str(result.result_id), build(result.agent_id, Kind.RESULTS), result.to_json(), now),
                    )
                    assert cur.lastrowid is not None
                    seqs.append(int(cur.lastrowid))
                    if source is not None:
                        self._db.execute(
                            "INSERT OR REPLACE INTO pending_moves (source, image_sha256, result_id) "
                            "VALUES (?, ?, ?)",
                            (str(source), result.image_sha256, str(result.result_id)),
                        )
            self._depth += len(seqs)  # committed
        return seqs

    def _transaction(self, what: str, fix: str = "") -> contextlib.AbstractContextManager[None]:
        """:func:`sqlite_transaction` on this outbox's database.

        Callers hold ``self._lock`` and update state outside the database (``_depth``) only after
        the block, once the transaction committed.
        """
        return sqlite_transaction(self._db, self.path, what, fix)

    def after(self, seq: int, limit: int, until: int | None = None) -> list[OutboxRow]:
        """Up to ``limit`` rows with a sequence number above ``seq`` (and at most ``until``), in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, result_id, topic, payload FROM outbox WHERE seq > ? AND seq <= ? "
                "ORDER BY seq LIMIT ?",
                (seq, _MAX_SEQ if until is None else until, limit),
            ).fetchall()
        return [OutboxRow(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def newest_seq(self) -> int:
        """The sequence number of the newest row (0 when the outbox is empty)."""
        with self._lock:
            (seq,) = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()
        return int(seq or 0)

    def ack(self, seq: int) -> None:
        """Delete row ``seq``: the broker has acknowledged it."""
        self.ack_many([seq])

    def ack_many(self, seqs: list[int]) -> None:
        """Delete every row in ``seqs`` in one transaction (a burst of PUBACKs)."""
        if not seqs:
            return
        with self._lock:
            deleted = 0
            with self._transaction("cannot delete acknowledged rows"):
                for seq in seqs:
                    cur = self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
                    deleted += max(cur.rowcount, 0)
            self._depth -= deleted  # committed

    def depth(self) -> int:
        """Results not yet acknowledged by the broker (kept in memory: cheap to ask often)."""
        with self._lock:
            return self._depth

    def pending_moves(self) -> list[PendingMove]:
        """Source files whose result is committed but which were not moved to ``done`` yet."""
        with self._lock:
            rows = self._db.execute("SELECT source, image_sha256, result_id FROM pending_moves").fetchall()
        return [PendingMove(Path(r[0]), str(r[1]), str(r[2])) for r in rows]

    def pending_move(self, source: Path) -> PendingMove | None:
        with self._lock:
            r = self._db.execute(
                "SELECT source, image_sha256, result_id FROM pending_moves WHERE source = ?", (str(source),)
            ).fetchone()
        return PendingMove(Path(r[0]), str(r[1]), str(r[2])) if r else None

    def clear_move(self, source: Path) -> None:
        """Forget the pending move of ``source`` (it has been moved)."""
        with self._lock:
            self._db.execute("DELETE FROM pending_moves WHERE source = ?", (str(source),))

    def close(self) -> None:
        """Close the database (and the evidence queue, when there is one)."""
        with self._lock:
            self._db.close()
        if self.evidence_queue is not None:
            self.evidence_queue.close()
