"""Dashboard review pages (blueprint ``review``): the queue and a result's review panel.

``/review``: the queue, most urgent first (flagged, positive, low confidence, confident negative;
oldest first within each), by view (open, unreviewed, reviewed, needs_second, final), a page at a
time by keyset cursor; keyboard j / k move, Enter opens. ``/review/<result_id>``: the result's facts
and the review panel (``_review_panel.html``, which the result page includes as well): state,
history, and for reviewers and admins the confirm / reclassify / comment / sign forms; keyboard
c confirm, r then a digit reclassify, s sign, n next in the queue. Everything works without
JavaScript through the forms. Every signed-in person reads; only reviewers and admins see the
controls, and a POST from anyone else is answered 403. Forms are CSRF-checked
(:func:`hub.web.guards.check_csrf`) and carry the review's version: a stale form is a 409.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from pydantic import ValidationError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response

from hub.api.params import validation_message
from hub.db.review_models import Classification
from hub.extensions import hub_ext
from hub.identity.sessions import SessionUser
from hub.review.policy import Reviewer, ReviewSettings, settings_of
from hub.review.queue import VIEWS, QueueCursor, next_in_queue, queue_page
from hub.review.report import cell_count, queue_item_json, review_json
from hub.review.schemas import ReviewBody, SignBody
from hub.review.service import ReviewError, find_result, review, sign, status_of
from hub.roles import Role
from hub.web.guards import check_csrf, login_required, may, me, roles_required
from hub.web.login import safe_next
from shared.clock import utcnow

bp = Blueprint("review", __name__, template_folder="../templates")
PAGE = 50
VIEW_NAMES = {
    "open": "Open",
    "unreviewed": "To review",
    "reviewed": "To sign",
    "needs_second": "Second signature",
    "final": "Final",
}
reviewer_required = roles_required(Role.REVIEWER)


def _settings() -> ReviewSettings:
    return settings_of(hub_ext.services.config)


def as_reviewer(user: SessionUser | None) -> Reviewer | None:
    """The signed-in person as a reviewer, or None when their role may not review."""
    if user is None or not may(user, Role.REVIEWER):
        return None
    return Reviewer(user.user_id, user.username, user.role.value)


def review_panel_context(s: Session, row: Classification, page: str = "review.result_page") -> dict[str, Any]:
    """What ``_review_panel.html`` needs for result ``row``, for the signed-in person: pass it to
    the template as ``review_panel`` (``{% include "_review_panel.html" %}``). ``page`` is the
    endpoint (taking ``result_id``) of the page that shows the panel: its forms come back to it and
    "next in the queue" opens the next result on it. Call it in a transaction (``db.transaction()``):
    a result stored before review gets its status on first view."""
    settings = _settings()
    who = as_reviewer(me())
    status = status_of(s, row, settings)
    following = next_in_queue(s, status)
    return {
        "review": review_json(s, row, status, settings, who),
        "can_review": who is not None,
        "cells": cell_count(s, row),
        "next_url": url_for(page, result_id=following.result_id) if following else None,
        "return_to": url_for(page, result_id=row.result_id),
    }


def _result_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        abort(404, description=f"{raw[:64]!r} is not a result id")


@bp.get("/review")
@login_required
def queue_page_view() -> Any:
    """The queue: ``?view=`` (default open), ``?cursor=`` from the previous page's next link."""
    view = request.args.get("view", "open")
    if view not in VIEWS:
        return _queue(400, "open", None, f"unknown view {view[:32]!r}; choose one of: {', '.join(VIEWS)}")
    after = None
    if cursor := request.args.get("cursor"):
        try:
            after = QueueCursor.decode(cursor[:256], view).key
        except ValueError as exc:
            return _queue(400, view, None, f"cursor {exc}")
    return _queue(200, view, after, None)


def _queue(status: int, view: str, after: Any, error: str | None) -> tuple[str, int]:
    with hub_ext.services.db.session() as s:
        rows, more = queue_page(s, view, PAGE, after)
        items = [queue_item_json(st, row) for st, row in rows]
    next_cursor = QueueCursor(more, view).encode() if more else None
    html = render_template(
        "review_queue.html",
        items=items,
        view=view,
        views=VIEW_NAMES,
        next_cursor=next_cursor,
        first_page=after is None,
        error=error,
        can_review=as_reviewer(me()) is not None,
    )
    return html, status


def _result_page(result_id: uuid.UUID, status: int = 200, error: str | None = None) -> tuple[str, int]:
    with hub_ext.services.db.transaction() as s:
        try:
            row = find_result(s, result_id)
        except ReviewError:
            abort(404, description=f"no result {result_id} is stored on this hub")
        panel = review_panel_context(s, row)
        html = render_template("review_result.html", r=row, review_panel=panel, error=error)
    return html, status


@bp.get("/review/<result_id>")
@login_required
def result_page(result_id: str) -> Any:
    """A result's facts and its review panel."""
    return _result_page(_result_id(result_id))


def _form_body() -> ReviewBody:
    form = request.form
    cell = form.get("cell_number", "").strip()
    values: dict[str, Any] = {
        "action": form.get("action", ""),
        "label": form.get("label", "").strip() or None,
        "comment": form.get("comment", ""),
        "version": form.get("version", ""),
    }
    if cell:
        if not cell.isdigit() or not 1 <= int(cell) <= 256:
            raise ReviewError(422, "unknown_cell", f"cell: enter a number from 1 to 256, got {cell[:16]!r}")
        values["cell_index"] = int(cell) - 1
    try:
        return ReviewBody.model_validate(values)
    except ValidationError as exc:
        raise ReviewError(422, "invalid_form", validation_message(exc)) from None


def _back(result_id: uuid.UUID) -> Response:
    target = request.form.get("return_to", "")
    default = url_for("review.result_page", result_id=result_id)
    return redirect(safe_next(target) if target else default, code=303)


@bp.post("/review/<result_id>/action")
@reviewer_required
def review_action(result_id: str) -> Any:
    """Confirm, reclassify or comment (on the result or, with ``cell_number``, one cell)."""
    check_csrf()
    rid = _result_id(result_id)
    who = as_reviewer(me())
    assert who is not None  # reviewer_required
    try:
        body = _form_body()
        with hub_ext.services.db.transaction() as s:
            status = review(s, rid, body, who, _settings(), utcnow())
            done = f"{body.action}: done; the result is {status.state.replace('_', ' ')}"
    except ReviewError as exc:
        if exc.status == 404:
            abort(404, description=exc.message)
        return _result_page(rid, exc.status, f"Not done: {exc.message}")
    flash(done)
    return _back(rid)


@bp.post("/review/<result_id>/sign")
@reviewer_required
def review_sign(result_id: str) -> Any:
    """Sign the result (final, or the first of two signatures under the two-person rule)."""
    check_csrf()
    rid = _result_id(result_id)
    who = as_reviewer(me())
    assert who is not None  # reviewer_required
    try:
        body = SignBody.model_validate(
            {"version": request.form.get("version", ""), "comment": request.form.get("comment", "")}
        )
    except ValidationError as exc:
        return _result_page(rid, 422, f"Not signed: {validation_message(exc)}")
    try:
        with hub_ext.services.db.transaction() as s:
            status = sign(s, rid, body, who, _settings(), utcnow())
            state = status.state
    except ReviewError as exc:
        if exc.status == 404:
            abort(404, description=exc.message)
        return _result_page(rid, exc.status, exc.message[0].upper() + exc.message[1:])
    flash("signed: the result is final" if state == "final" else "signed: a second reviewer must sign too")
    return _back(rid)
