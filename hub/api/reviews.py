"""Review routes: the queue, a result's review (state + audit trail), review actions and sign-off.

Readers see the queue and every review; reviewers and admins act. An action is attributed to a
person, so it needs a dashboard session or a personal API token (a service token is refused with
403 ``person_required``). Every write carries the ``version`` the caller read: a stale one is a 409.
The rules live in :mod:`hub.review`.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import g
from pydantic import BaseModel, Field

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_body, parse_query
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.review.policy import Reviewer, ReviewSettings, settings_of
from hub.review.queue import QueueCursor, QueueView, queue_page
from hub.review.report import queue_item_json, review_json
from hub.review.schemas import QueuePage, ReviewBody, ReviewOut, SignBody
from hub.review.service import find_result, review, sign, status_of
from hub.roles import READERS, Principal, Role
from shared.clock import utcnow

REVIEWERS = (Role.REVIEWER,)
MAX_QUEUE_PAGE = 200


class ResultPath(BaseModel):
    """Path parameter of the review routes."""

    result_id: uuid.UUID = Field(title="the result's id (result_id, a UUID)")


class QueueQuery(QueryModel):
    view: QueueView = Field(
        "open", title="open (everything not final, the default), unreviewed, reviewed, needs_second or final"
    )
    limit: int = Field(50, ge=1, le=MAX_QUEUE_PAGE, title="results per page")
    cursor: str | None = Field(
        None, max_length=256, title="next_cursor of the previous page (same view): the page after it"
    )


def _settings() -> ReviewSettings:
    return settings_of(hub_ext.services.config)


def _result_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", f"result_id must be a result's UUID (its result_id), got {raw[:64]!r}"
        ) from None


def _person(principal: Principal) -> Reviewer:
    """The acting reviewer; 403 for a token that stands for no person."""
    if principal.user_id is None:
        raise ApiError(
            403,
            "person_required",
            f"{principal.name!r} is a service token: reviews and signatures are a person's; use a "
            "personal API token (Account page) or the dashboard",
        )
    return Reviewer(principal.user_id, principal.name, principal.role.value)


def _caller(principal: Principal) -> tuple[Reviewer | None, str]:
    """The caller as a reviewer, or None and why they may not sign."""
    if principal.role not in (Role.ADMIN, *REVIEWERS):
        return None, "your role may not sign results"
    if principal.user_id is None:
        return None, "a service token may not sign results: use a personal API token"
    return Reviewer(principal.user_id, principal.name, principal.role.value), ""


def _review_answer(result_id: uuid.UUID, who: Reviewer | None, why: str = "") -> dict[str, Any]:
    settings = _settings()
    with hub_ext.services.db.transaction() as s:
        row = find_result(s, result_id)
        return review_json(s, row, status_of(s, row, settings), settings, who, why)


@bp.get("/review/queue")
@documented(*READERS, query=QueueQuery, responses={200: QueuePage})
def review_queue() -> dict[str, Any]:
    """The review queue, most urgent first: flagged, positive, low confidence, then confident negatives.

    Oldest first within a priority. ``view``: open (not final; default), unreviewed, reviewed,
    needs_second or final. Page by ``next_cursor`` with the same view.
    """
    q = parse_query(QueueQuery)
    after = None
    if q.cursor is not None:
        try:
            after = QueueCursor.decode(q.cursor, q.view).key
        except ValueError as exc:
            raise ApiError(400, "invalid_parameter", f"cursor {exc}") from None
    with hub_ext.services.db.session() as s:
        rows, more = queue_page(s, q.view, q.limit, after)
        items = [queue_item_json(st, row) for st, row in rows]
    return {
        "view": q.view,
        "items": items,
        "next_cursor": QueueCursor(more, q.view).encode() if more else None,
    }


@bp.get("/classifications/<result_id>/review")
@documented(*READERS, path=ResultPath, responses={200: ReviewOut}, errors=(404,))
def get_review(result_id: str) -> dict[str, Any]:
    """A result's review: state, priority, labels to choose from, signatures and the audit trail."""
    return _review_answer(_result_id(result_id), *_caller(g.principal))


@bp.post("/classifications/<result_id>/review")
@documented(*REVIEWERS, path=ResultPath, body=ReviewBody, responses={200: ReviewOut}, errors=(404, 409, 422))
def post_review(result_id: str) -> dict[str, Any]:
    """Confirm, reclassify or comment on a result, or on one cell (``cell_index``); answers the review.

    409: the result is final, or ``version`` is stale (reload); 422: an unknown label or cell, or no
    comment. Reviewers and admins, as a person (dashboard session or personal token).
    """
    rid = _result_id(result_id)
    body = parse_body(ReviewBody)
    who = _person(g.principal)
    settings = _settings()
    with hub_ext.services.db.transaction() as s:
        review(s, rid, body, who, settings, utcnow())
    return _review_answer(rid, who)


@bp.post("/classifications/<result_id>/sign")
@documented(*REVIEWERS, path=ResultPath, body=SignBody, responses={200: ReviewOut}, errors=(404, 409, 422))
def post_sign(result_id: str) -> dict[str, Any]:
    """Sign a result: final, or its first signature when the two-person rule needs a second person.

    409 with the reason when it may not be signed: unreviewed positive, unfamiliar or
    low-confidence, labelled unsure, already final, your own first signature, or a stale ``version``.
    """
    rid = _result_id(result_id)
    body = parse_body(SignBody)
    who = _person(g.principal)
    settings = _settings()
    with hub_ext.services.db.transaction() as s:
        sign(s, rid, body, who, settings, utcnow())
    return _review_answer(rid, who)
