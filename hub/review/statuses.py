"""``review_status`` rows: one per result, made by one set-based statement per ingest batch.

:func:`add_review_statuses` runs in the ingest transaction right after the batch's results were
inserted. It is a single ``INSERT INTO review_status ... SELECT ... FROM classifications WHERE
result_id IN (the batch)``: the rows are built by the database from the results just written, so no
result is read back into Python and the priority is computed from exactly what was stored. A
result that already has a status (a redelivered duplicate, a concurrent worker) is skipped
(``ON CONFLICT DO NOTHING`` on PostgreSQL and SQLite; ``NOT EXISTS`` as well, for any dialect).

:func:`ensure_status` makes the row of one result that predates review on first use (migration
0009 backfills every stored result once, with the default settings).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Table,
    and_,
    any_,
    case,
    exists,
    insert,
    literal,
    select,
    true,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.types import Uuid

from hub.db.review_models import Classification, ReviewStatus
from hub.review.policy import Priority, ReviewSettings, State

#: result ids per statement: PostgreSQL takes them as one array; SQLite as bound parameters
CHUNK = 10_000
#: an INSERT ... SELECT reports its row count only when asked (SQLAlchemy 2's preserve_rowcount)
COUNTED = {"preserve_rowcount": True}


def priority_case(settings: ReviewSettings) -> ColumnElement[int]:
    """:meth:`ReviewSettings.priority` as a SQL ``CASE`` over ``classifications``' columns."""
    c = Classification
    low: ColumnElement[bool] = c.low_confidence.is_(True)
    if settings.low_confidence_below is not None:
        low = low | (c.confidence < settings.low_confidence_below)
    return case(
        (c.unfamiliar.is_(True), literal(int(Priority.FLAGGED))),
        (c.label.not_in(settings.negative_labels), literal(int(Priority.POSITIVE))),
        (low, literal(int(Priority.LOW_CONFIDENCE))),
        else_=literal(int(Priority.NEGATIVE)),
    )


def _rows(settings: ReviewSettings, where: ColumnElement[bool]) -> Select[int, str, int, datetime, str, int]:
    c = Classification
    missing = ~exists().where(ReviewStatus.result_id == c.id)
    return select(
        c.id,
        literal(State.UNREVIEWED.value),
        priority_case(settings),
        c.captured_at,
        c.label,
        literal(1),
    ).where(and_(where, missing))


def _insert(s: Session, rows: Select[int, str, int, datetime, str, int]) -> Insert:
    # on the Table, not the mapped class: a plain Core INSERT ... SELECT, no ORM bulk-insert handling
    table = ReviewStatus.__table__
    assert isinstance(table, Table)
    names = ["result_id", "state", "priority", "captured_at", "current_label", "version"]
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table).from_select(names, rows).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).from_select(names, rows).on_conflict_do_nothing()
    return insert(table).from_select(names, rows)


def add_review_statuses(s: Session, result_ids: Sequence[uuid.UUID], settings: ReviewSettings) -> int:
    """Give every result of ``result_ids`` (the UUIDs of an ingest batch, duplicates allowed) that is
    stored and has no status yet its ``unreviewed`` status, in the caller's transaction.

    Returns:
        how many statuses were added.
    """
    added = 0
    ids = list(dict.fromkeys(result_ids))
    postgres = s.get_bind().dialect.name == "postgresql"
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        # one array parameter on PostgreSQL: the statement text is the same for every batch
        column = Classification.result_id
        where = column == any_(literal(chunk, postgresql.ARRAY(Uuid()))) if postgres else column.in_(chunk)
        result = s.execute(_insert(s, _rows(settings, where)), execution_options=COUNTED)
        added += result.rowcount  # type: ignore[attr-defined]  # a CursorResult
    return added


def backfill(s: Session, settings: ReviewSettings) -> int:
    """Statuses for every stored result that has none (one ``INSERT ... SELECT``); returns how many."""
    result = s.execute(_insert(s, _rows(settings, true())), execution_options=COUNTED)
    return int(result.rowcount)  # type: ignore[attr-defined]


def ensure_status(s: Session, classification_id: int, settings: ReviewSettings) -> ReviewStatus | None:
    """The status of result ``classification_id``, made now if it predates review; None when no
    such result is stored."""
    status = s.get(ReviewStatus, classification_id)
    if status is not None:
        return status
    s.execute(_insert(s, _rows(settings, Classification.id == classification_id)))
    return s.get(ReviewStatus, classification_id)
