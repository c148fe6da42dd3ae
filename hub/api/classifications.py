"""``GET /classifications``: filtered results, newest first, one page at a time; and
``GET /classifications/<result_id>``: one result with its cells.

Pages follow a keyset cursor on ``(captured_at, id)``: each answer's ``next_cursor`` is passed back
as ``cursor`` (with the same filters) for the page after it, which the database reads as one range
of an index ending in ``(captured_at, id)`` (migration 0006), however deep it is. The older
``page`` parameter (OFFSET) still works for existing clients but reads and skips every row before
the page. :func:`page_query` and :func:`count_query` are the statements the route runs, so
tests/integration/test_results_queries.py can hold their PostgreSQL plans to an index scan.

The review filters (``review_state``, ``reviewed_label``) read ``review_status`` first: the page is
then a range of its index ``(state | current_label, captured_at, result_id)`` (migration 0010), in
the same order, since a status copies its result's ``captured_at``. :class:`FilterQuery` is the
filter part of the query string, shared with the CSV and FHIR exports (:mod:`hub.api.exports`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, false, func, or_, select, true, tuple_

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_query
from hub.api.schemas import ClassificationDetail, ClassificationOut
from hub.api.serialize import classification_detail_json, classification_json
from hub.db.models import Classification, ResultCell
from hub.db.review_models import ReviewStatus
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.review.policy import State
from hub.roles import READERS
from shared.cells.spec import InputKind

MAX_PER_PAGE = 500
MAX_ID = 2**31 - 1  # classifications.id is an INTEGER: PostgreSQL refuses a larger value
TIME_HINT = "must be an ISO 8601 time such as 2026-01-01T00:00:00Z"
CURSOR_HINT = (
    "is not a cursor this hub issued: pass the previous page's next_cursor unchanged, "
    "or leave cursor out to start from the newest result"
)
#: the order of every page, and of the indexes that serve it
NEWEST_FIRST = (Classification.captured_at.desc(), Classification.id.desc())
#: a result and its review status
REVIEWED = Classification.id == ReviewStatus.result_id


def _parse_time(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(TIME_HINT) from None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise ValueError(f"{TIME_HINT}, within years 1..9999 in UTC") from None


#: An optional query-string time: ISO 8601, UTC when it has no offset.
QueryTime = Annotated[datetime | None, BeforeValidator(_parse_time), AfterValidator(_as_utc)]


@dataclass(frozen=True)
class ResultFilters:
    """What a results query keeps (every filter optional and combinable; ``until`` is exclusive).

    ``label`` is the model's label; ``reviewed_label`` the label after review (the model's until a
    reviewer reclassifies). ``flagged`` keeps results that are unfamiliar or low-confidence (false:
    neither). ``lab``, ``model_name`` and ``model_version`` match exactly.
    """

    agent_id: str | None = None
    label: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    unfamiliar: bool | None = None
    input_kind: InputKind | None = None
    specimen_id: str | None = None
    lab: str | None = None
    flagged: bool | None = None
    review_state: State | None = None
    reviewed_label: str | None = None
    model_name: str | None = None
    model_version: str | None = None

    @property
    def by_review(self) -> bool:
        """Whether the query starts from ``review_status`` (a review filter is set)."""
        return self.review_state is not None or bool(self.reviewed_label)

    def order_keys(self) -> tuple[Any, Any]:
        """The ``(captured_at, id)`` pair the pages are ordered and cut by."""
        if self.by_review:
            return ReviewStatus.captured_at, ReviewStatus.result_id
        return Classification.captured_at, Classification.id

    def where(self) -> list[ColumnElement[bool]]:
        conds: list[ColumnElement[bool]] = []
        at = self.order_keys()[0]
        if self.agent_id:
            conds.append(Classification.agent_id == self.agent_id)
        if self.label:
            conds.append(Classification.label == self.label)
        if self.since is not None:
            conds.append(at >= self.since)
        if self.until is not None:
            conds.append(at < self.until)
        if self.unfamiliar is not None:
            # ``= true`` as the partial index's predicate reads (migration 0007), so it serves the filter
            conds.append(Classification.unfamiliar == (true() if self.unfamiliar else false()))
        if self.input_kind is not None:
            conds.append(Classification.input_kind == self.input_kind.value)
        if self.specimen_id:
            conds.append(Classification.specimen_id == self.specimen_id)
        if self.lab:
            conds.append(Classification.lab == self.lab)
        if self.flagged is not None:
            # written as the partial index's predicate (migration 0010), so it serves ``flagged=true``
            either = or_(Classification.unfamiliar == true(), Classification.low_confidence == true())
            conds.append(either if self.flagged else ~either)
        if self.model_name:
            conds.append(Classification.model_name == self.model_name)
        if self.model_version:
            conds.append(Classification.model_version == self.model_version)
        if self.review_state is not None:
            conds.append(ReviewStatus.state == self.review_state.value)
        if self.reviewed_label:
            conds.append(ReviewStatus.current_label == self.reviewed_label)
        return conds

    def fingerprint(self) -> str:
        """A short digest of the filters, carried in a cursor so it is not reused with others.

        Filters added after the first ones join the digest only when set, so cursors issued before
        them stay valid.
        """
        times = [t.isoformat() if t else None for t in (self.since, self.until)]
        parts: list[Any] = [self.agent_id or None, self.label or None, *times]
        kind = self.input_kind.value if self.input_kind is not None else None
        state = self.review_state.value if self.review_state is not None else None
        later = [
            self.lab or None,
            self.flagged,
            state,
            self.reviewed_label or None,
            self.model_name or None,
            self.model_version or None,
        ]
        if any(v is not None for v in later):
            parts += [self.unfamiliar, kind, self.specimen_id or None, *later]
        elif self.unfamiliar is not None or kind is not None or self.specimen_id:
            parts += [self.unfamiliar, kind, self.specimen_id or None]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor:
    """The position after the last row of a page: its ``(captured_at, id)`` and the page's filters."""

    captured_at: datetime
    id: int
    filters: str

    def encode(self) -> str:
        raw = json.dumps([self.captured_at.isoformat(), self.id, self.filters], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises ValueError (:data:`CURSOR_HINT`) for anything :meth:`encode` did not make."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            at, row_id, filters = json.loads(raw)
            when = datetime.fromisoformat(at)
            ok = (
                when.tzinfo is not None
                and type(row_id) is int
                and 0 < row_id <= MAX_ID
                and isinstance(filters, str)
                and len(filters) == 16
            )
            when = when.astimezone(timezone.utc)
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(CURSOR_HINT)
        return cls(when, row_id, filters)


def _rows(filters: ResultFilters, *columns: Any) -> Select[Any]:
    """``columns`` of the results matching ``filters``, newest first (no limit)."""
    at, row_id = filters.order_keys()
    query = select(*columns)
    if filters.by_review:
        query = query.select_from(ReviewStatus).join(
            Classification, Classification.id == ReviewStatus.result_id
        )
    return query.where(*filters.where()).order_by(at.desc(), row_id.desc())


def page_query(
    filters: ResultFilters, *, limit: int, after: Cursor | None = None, offset: int = 0
) -> Select[Any]:
    """The rows of one page, newest first: those matching ``filters`` that come after ``after``.

    The keyset condition is a row comparison, ``(captured_at, id) < (:t, :id)``, which PostgreSQL
    (and SQLite) read as a range of the index ending in ``(captured_at, id)``.
    """
    query = _rows(filters, Classification)
    if after is not None:
        query = query.where(tuple_(*filters.order_keys()) < (after.captured_at, after.id))
    query = query.limit(limit)
    return query.offset(offset) if offset else query


def export_query(filters: ResultFilters, *, after: Cursor | None = None) -> Select[Any]:
    """``(Classification, ReviewStatus | None)`` rows matching ``filters``, newest first, no limit:
    what the CSV and FHIR exports read (a result without a status yet reads as unreviewed)."""
    if filters.by_review:
        query = _rows(filters, Classification, ReviewStatus)
    else:
        query = _rows(filters, Classification, ReviewStatus).outerjoin(ReviewStatus, REVIEWED)
    if after is not None:
        query = query.where(tuple_(*filters.order_keys()) < (after.captured_at, after.id))
    return query


def count_query(filters: ResultFilters) -> Select[int]:
    """How many rows match ``filters`` (over every page)."""
    query = select(func.count()).select_from(ReviewStatus if filters.by_review else Classification)
    if filters.by_review:
        query = query.join(Classification, REVIEWED)
    return query.where(*filters.where())


def _cursor_token(value: str | None) -> str | None:
    if value is not None:
        Cursor.decode(value)
    return value


class FilterQuery(QueryModel):
    """The filters of a results view, as query parameters (the list, the CSV and FHIR exports)."""

    agent_id: str | None = Field(None, max_length=64, title="only this agent's results")
    lab: str | None = Field(None, max_length=128, title="only results of agents in this lab")
    label: str | None = Field(None, max_length=64, title="only results the model gave this label")
    reviewed_label: str | None = Field(
        None,
        max_length=64,
        title="only results whose label after review (the model's until reclassified) is this",
    )
    since: QueryTime = Field(None, title="captured at or after (ISO 8601)")
    until: QueryTime = Field(None, title="captured before (ISO 8601, exclusive)")
    unfamiliar: bool | None = Field(
        None,
        title="true: only results flagged unfamiliar (unlike the training images); false: only the others",
    )
    flagged: bool | None = Field(
        None, title="true: only results flagged unfamiliar or low-confidence; false: only the others"
    )
    review_state: State | None = Field(None, title="only results in this review state")
    input_kind: InputKind | None = Field(
        None,
        title="only single-cell images (cell) or smear fields (field); older agents' results have neither",
    )
    specimen_id: str | None = Field(None, max_length=128, title="only this specimen's results")
    model_name: str | None = Field(None, max_length=128, title="only results of this model")
    model_version: str | None = Field(None, max_length=64, title="only results of this model version")

    def filters(self) -> ResultFilters:
        return ResultFilters(
            agent_id=self.agent_id,
            label=self.label,
            since=self.since,
            until=self.until,
            unfamiliar=self.unfamiliar,
            input_kind=self.input_kind,
            specimen_id=self.specimen_id,
            lab=self.lab,
            flagged=self.flagged,
            review_state=self.review_state,
            reviewed_label=self.reviewed_label,
            model_name=self.model_name,
            model_version=self.model_version,
        )


def check_cursor(token: str | None, filters: ResultFilters) -> Cursor | None:
    """The decoded ``cursor`` parameter, or None; 400 when it was issued for other filters."""
    if token is None:
        return None
    after = Cursor.decode(token)
    if after.filters != filters.fingerprint():
        raise ApiError(
            400,
            "invalid_parameter",
            "cursor was issued for other filters: repeat that page's filters (agent_id, lab, label, "
            "reviewed_label, since, until, unfamiliar, flagged, review_state, input_kind, specimen_id, "
            "model_name, model_version) with it, or leave cursor out to start again",
        )
    return after


class ClassificationsQuery(FilterQuery):
    cursor: Annotated[str | None, AfterValidator(_cursor_token)] = Field(
        None,
        max_length=256,
        title="next_cursor of the previous page: the page after it (repeat the same filters)",
    )
    page: int | None = Field(
        None,
        ge=1,
        le=10**9,
        title="1-based page by offset (deprecated: slower the deeper it goes; follow next_cursor instead)",
    )
    per_page: int = Field(50, ge=1, le=MAX_PER_PAGE, title="results per page")
    count: bool = Field(
        True,
        title="count the matching results into total (requests without cursor); false skips the count, "
        "which reads every matching index entry (hundreds of ms at a million results)",
    )


class ClassificationPage(BaseModel):
    """One page of results, newest first."""

    model_config = ConfigDict(extra="forbid")

    items: list[ClassificationOut]
    per_page: int
    next_cursor: str | None = Field(
        title="pass as cursor (with the same filters) for the next page; null on the last page"
    )
    page: int | None = Field(title="the page number asked for, or 1; null when paging by cursor")
    total: int | None = Field(
        title="results matching the filters over every page; null with cursor or count=false"
    )


@bp.get("/classifications")
@documented(*READERS, query=ClassificationsQuery, responses={200: ClassificationPage})
def list_classifications() -> dict[str, Any]:
    """Results newest first, filtered by any combination of the filters; page by next_cursor.

    Filters: ``agent_id``, ``lab``, ``label`` (the model's), ``reviewed_label`` (after review),
    ``since`` / ``until`` (captured_at, ISO 8601, until exclusive), ``unfamiliar``, ``flagged``
    (unfamiliar or low-confidence), ``review_state``, ``input_kind`` (cell / field),
    ``specimen_id``, ``model_name``, ``model_version``. Items carry a field's ``cell_counts``, not
    its cells: ``GET /classifications/{result_id}`` has them.
    Paging: pass the answer's ``next_cursor`` as ``cursor`` with the same filters; ``page`` (offset)
    is kept for older clients. ``total`` is counted only without ``cursor`` and unless ``count=false``.
    """
    q = parse_query(ClassificationsQuery)
    filters = q.filters()
    if q.cursor is not None and q.page is not None:
        raise ApiError(
            400, "invalid_parameter", "page and cursor exclude each other: follow next_cursor alone"
        )
    after = check_cursor(q.cursor, filters)
    offset = ((q.page or 1) - 1) * q.per_page
    with hub_ext.services.db.session() as s:
        # one row more than the page says whether another page follows
        rows = s.scalars(page_query(filters, limit=q.per_page + 1, after=after, offset=offset)).all()
        total = None
        if after is None and q.count:
            total = s.scalar(count_query(filters)) or 0
        items = [classification_json(c) for c in rows[: q.per_page]]
    next_cursor = None
    if len(rows) > q.per_page:
        last = rows[q.per_page - 1]
        next_cursor = next_cursor_of(last, filters)
    return {
        "items": items,
        "per_page": q.per_page,
        "next_cursor": next_cursor,
        "page": None if after is not None else q.page or 1,
        "total": total,
    }


def next_cursor_of(last: Classification, filters: ResultFilters) -> str:
    """The cursor of the page after the one ending at ``last``."""
    return Cursor(last.captured_at, last.id, filters.fingerprint()).encode()


class ResultPath(BaseModel):
    """Path parameter of ``GET /classifications/<result_id>``."""

    result_id: uuid.UUID = Field(title="the result's id (result_id of a list item)")


@bp.get("/classifications/<result_id>")
@documented(*READERS, path=ResultPath, responses={200: ClassificationDetail}, errors=(404,))
def get_classification(result_id: str) -> dict[str, Any]:
    """One result with its cells (a field's, in the order the agent found them; empty for one cell)."""
    try:
        key = uuid.UUID(result_id)
    except ValueError:
        raise ApiError(
            400,
            "invalid_parameter",
            f"result_id {result_id[:64]!r} is not a UUID: pass a result_id from GET /api/v1/classifications",
        ) from None
    with hub_ext.services.db.session() as s:
        row = s.scalar(select(Classification).where(Classification.result_id == key))
        if row is None:
            raise ApiError(404, "result_not_found", f"no result with result_id {key}")
        cells = s.scalars(
            select(ResultCell).where(ResultCell.classification_id == row.id).order_by(ResultCell.cell_index)
        ).all()
        return classification_detail_json(row, list(cells))
