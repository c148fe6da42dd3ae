"""The review queue: results by urgency (priority, then oldest first), one page at a time.

Views: ``open`` (everything not final: the default), or one state (``unreviewed``, ``reviewed``
waiting for a signature, ``needs_second`` waiting for the second signature, ``final``). A page of
one state is one range of ``ix_review_status_queue (state, priority, captured_at, result_id)``
after the cursor. The ``open`` view reads that range for each open state, at most a page from each
(``UNION ALL`` of the three), and merges them: three short index range reads however many results
wait, with no sort over the table, on PostgreSQL and SQLite alike. Pages follow an opaque keyset
cursor, ``(priority, captured_at, result_id)`` of the page's last row plus the view it belongs to.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal, get_args

from sqlalchemy import Select, select, tuple_, union_all
from sqlalchemy.orm import Session

from hub.db.review_models import Classification, ReviewStatus
from hub.review.policy import OPEN_STATES, Priority, State

QueueView = Literal["open", "unreviewed", "reviewed", "needs_second", "final"]
VIEWS: tuple[str, ...] = get_args(QueueView)
MAX_ID = 2**31 - 1
CURSOR_HINT = (
    "is not a cursor of this queue view: pass the previous page's next_cursor unchanged with the "
    "same view, or leave cursor out to start from the most urgent result"
)


@dataclass(frozen=True)
class QueueKey:
    """A position in the queue order: after this row."""

    priority: int
    captured_at: datetime
    result_id: int

    @classmethod
    def of(cls, status: ReviewStatus) -> QueueKey:
        return cls(status.priority, status.captured_at, status.result_id)


@dataclass(frozen=True)
class QueueCursor:
    """The position after a page's last row, and the view the page was of."""

    key: QueueKey
    view: str

    def encode(self) -> str:
        k = self.key
        raw = json.dumps(
            [self.view, k.priority, k.captured_at.isoformat(), k.result_id], separators=(",", ":")
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, view: str) -> QueueCursor:
        """Raises ValueError (:data:`CURSOR_HINT`) for anything :meth:`encode` did not make for ``view``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            made_for, priority, at, row_id = json.loads(raw)
            when = datetime.fromisoformat(at)
            ok = (
                made_for == view
                and type(priority) is int
                and priority in set(Priority)
                and when.tzinfo is not None
                and type(row_id) is int
                and 0 < row_id <= MAX_ID
            )
            when = when.astimezone(timezone.utc)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(CURSOR_HINT)
        return cls(QueueKey(priority, when, row_id), view)


def _states(view: str) -> tuple[str, ...]:
    if view == "open":
        return tuple(s.value for s in OPEN_STATES)
    return (State(view).value,)


def queue_keys(view: str, limit: int, after: QueueKey | None = None) -> Select[int, int, datetime]:
    """The ``(result_id, priority, captured_at)`` of the next ``limit`` rows of ``view`` after ``after``,
    in queue order (the statement the route runs; tests hold its plan to index range reads)."""
    q = ReviewStatus
    order = (q.priority, q.captured_at, q.result_id)
    parts = []
    for state in _states(view):
        part = select(q.result_id, q.priority, q.captured_at).where(q.state == state)
        if after is not None:
            part = part.where(tuple_(*order) > (after.priority, after.captured_at, after.result_id))
        parts.append(part.order_by(*order).limit(limit))
    if len(parts) == 1:
        return parts[0]
    # each part as a subquery keeps its own ORDER BY / LIMIT (SQLite allows them only there)
    merged = union_all(*(select(p.subquery()) for p in parts)).subquery()
    return (
        select(merged.c.result_id, merged.c.priority, merged.c.captured_at)
        .order_by(merged.c.priority, merged.c.captured_at, merged.c.result_id)
        .limit(limit)
    )


def queue_page(
    s: Session, view: str, limit: int, after: QueueKey | None = None
) -> tuple[list[tuple[ReviewStatus, Classification]], QueueKey | None]:
    """Up to ``limit`` rows of ``view`` after ``after`` with their results, and the key to continue
    from (None on the last page)."""
    keys = list(s.execute(queue_keys(view, limit + 1, after)).all())
    page = keys[:limit]
    ids = [k[0] for k in page]
    statuses = {
        st.result_id: st for st in s.scalars(select(ReviewStatus).where(ReviewStatus.result_id.in_(ids)))
    }
    results = {c.id: c for c in s.scalars(select(Classification).where(Classification.id.in_(ids)))}
    rows = [(statuses[i], results[i]) for i in ids if i in statuses and i in results]
    more = None
    if len(keys) > limit and page:
        last = page[-1]
        more = QueueKey(last[1], last[2], last[0])
    return rows, more


def next_in_queue(s: Session, status: ReviewStatus) -> Classification | None:
    """The open result after ``status``'s in queue order, else the most urgent open one that is not it."""
    for after in (QueueKey.of(status), None):
        for row_id, _, _ in s.execute(queue_keys("open", 2, after)).all():
            if row_id != status.result_id:
                return s.get(Classification, row_id)
    return None
