"""The review state machine: confirm, reclassify, comment, sign; each action one row of the trail.

Every function takes the caller's session (one transaction per request), the acting
:class:`~hub.review.policy.Reviewer` (a person: reviews are signed by people), the
:class:`~hub.review.policy.ReviewSettings` and the time. The status row is read ``FOR UPDATE``
(PostgreSQL; SQLite serialises writers anyway) and the caller's ``version`` must be the stored
one, so two reviewers acting on the same result never silently overwrite each other: the second
gets a 409 and reloads. Refusals are :class:`ReviewError` (a :class:`~hub.errors.HubError`: the
API answers it as JSON, the dashboard shows its message): 404 no such result, 409 the state does not
allow it (final, unsigned review, stale version, two-person rule), 422 the request itself is wrong
(unknown label, no comment, no such cell).

See :mod:`hub.review.policy` for the states and rules.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db.results import ResultCell
from hub.db.review_models import Classification, ReviewAction, ReviewStatus
from hub.errors import HubError
from hub.review.policy import UNSURE, Action, Priority, Reviewer, ReviewSettings, State, choosable
from hub.review.schemas import ReviewBody, SignBody
from hub.review.statuses import ensure_status

#: why a result of each priority may not be signed unreviewed
UNREVIEWED_REASON = {
    Priority.FLAGGED: "an unfamiliar (flagged) result",
    Priority.POSITIVE: "a positive result",
    Priority.LOW_CONFIDENCE: "a low-confidence result",
}
LABEL_ACTIONS = (Action.CONFIRM.value, Action.RECLASSIFY.value)


class ReviewError(HubError):
    """A review action the hub refuses; the message says why and what to do."""


def find_result(s: Session, result_id: uuid.UUID) -> Classification:
    """The stored result ``result_id``; 404 when there is none (never stored, or retention removed it)."""
    row = s.scalar(select(Classification).where(Classification.result_id == result_id))
    if row is None:
        raise ReviewError(404, "result_not_found", f"no result {result_id} is stored on this hub")
    return row


def status_of(
    s: Session, row: Classification, settings: ReviewSettings, *, lock: bool = False
) -> ReviewStatus:
    """``row``'s review status (made now for a result that predates review), locked when ``lock``."""
    status = ensure_status(s, row.id, settings)
    if status is None:  # pragma: no cover - the result row was read in this transaction
        raise ReviewError(404, "result_not_found", f"result {row.result_id} was removed meanwhile")
    if lock:
        locked = s.get(ReviewStatus, row.id, with_for_update=True, populate_existing=True)
        assert locked is not None
        status = locked
    return status


def _check_version(s: Session, status: ReviewStatus, version: int) -> None:
    if version != status.version:
        last = s.scalar(
            select(ReviewAction.username)
            .where(ReviewAction.result_id == status.result_id)
            .order_by(ReviewAction.id.desc())
            .limit(1)
        )
        who = f" by {last}" if last else ""
        raise ReviewError(
            409,
            "stale_version",
            f"this result's review changed since you loaded it (your version {version}, now "
            f"{status.version}, last changed{who}); reload it, check what changed, and act again",
        )


def _record(
    s: Session,
    status: ReviewStatus,
    row: Classification,
    who: Reviewer,
    action: Action,
    now: datetime,
    *,
    from_label: str | None,
    to_label: str | None,
    from_state: str,
    comment: str,
    cell_index: int | None = None,
) -> None:
    """Append one action to the trail and move the status to its next version."""
    s.add(
        ReviewAction(
            result_id=row.id,
            result_uuid=row.result_id,
            cell_index=cell_index,
            action=action.value,
            from_label=from_label,
            to_label=to_label,
            from_state=from_state,
            to_state=status.state,
            comment=comment,
            user_id=who.user_id,
            username=who.username[:64],
            role=who.role[:16],
            at=now,
        )
    )
    status.version += 1
    status.updated_at = now


def _refuse_final(status: ReviewStatus) -> None:
    if status.state == State.FINAL.value:
        raise ReviewError(
            409,
            "review_final",
            f"this result is final (signed by {status.second_signed_by or status.signed_by}); "
            "a final result is not changed: add a comment instead",
        )


def _label_choice(body: ReviewBody, current: str, model_labels: list[str], what: str) -> str:
    """The label an action sets: the current one (confirm) or the new one (reclassify)."""
    if body.action == Action.CONFIRM.value:
        if current == UNSURE:
            raise ReviewError(
                422,
                "nothing_to_confirm",
                f"{what} is labelled unsure: there is nothing to confirm; reclassify it to a label",
            )
        return current
    allowed = choosable(model_labels)
    if body.label is None:
        raise ReviewError(422, "label_required", f"reclassify needs a label, one of: {', '.join(allowed)}")
    if body.label not in allowed:
        raise ReviewError(
            422,
            "unknown_label",
            f"label {body.label!r} cannot be chosen for {what}; choose one of: {', '.join(allowed)}",
        )
    if body.label == current:
        raise ReviewError(
            422, "same_label", f"{what} is already labelled {current!r}: confirm it instead of reclassifying"
        )
    return body.label


def _comment_required(body: ReviewBody) -> None:
    if not body.comment.strip():
        raise ReviewError(422, "comment_required", "a comment action needs a comment: write some text")


def review(
    s: Session, result_id: uuid.UUID, body: ReviewBody, who: Reviewer, settings: ReviewSettings, now: datetime
) -> ReviewStatus:
    """Confirm, reclassify or comment on result ``result_id`` (or one of its cells).

    Whole result: confirm keeps its current label, reclassify sets a new one (the model's labels,
    ``unsure`` or ``other``); either makes an unreviewed result ``reviewed``. A reclassification of
    a result waiting for its second signature voids the first one (back to ``reviewed``). A cell:
    the action is recorded against that cell only; the field's label is for a reviewer to decide.
    A comment is allowed in every state, even final.
    """
    row = find_result(s, result_id)
    status = status_of(s, row, settings, lock=True)
    _check_version(s, status, body.version)
    from_state = status.state
    if body.cell_index is not None:
        _review_cell(s, status, row, body, who, now)
        return status
    if body.action == Action.COMMENT.value:
        _comment_required(body)
        _record(
            s, status, row, who, Action.COMMENT, now,
            from_label=status.current_label, to_label=status.current_label, from_state=from_state,
            comment=body.comment,
        )  # fmt: skip
        return status
    _refuse_final(status)
    before = status.current_label
    after = _label_choice(body, before, list(row.probabilities), "this result")
    status.current_label = after
    status.reviewed_by_id, status.reviewed_by, status.reviewed_at = who.user_id, who.username, now
    if body.action == Action.RECLASSIFY.value and status.state == State.NEEDS_SECOND.value:
        # the first signature was for another label
        status.signed_by_id, status.signed_by, status.signed_at = None, None, None
        status.state = State.REVIEWED.value
    elif status.state == State.UNREVIEWED.value:
        status.state = State.REVIEWED.value
    _record(
        s, status, row, who, Action(body.action), now,
        from_label=before, to_label=after, from_state=from_state, comment=body.comment,
    )  # fmt: skip
    return status


def cell_label(s: Session, cell: ResultCell) -> str:
    """A cell's current label: the last a reviewer confirmed or set, else the model's."""
    latest = s.scalar(
        select(ReviewAction.to_label)
        .where(
            ReviewAction.result_id == cell.classification_id,
            ReviewAction.cell_index == cell.cell_index,
            ReviewAction.action.in_(LABEL_ACTIONS),
        )
        .order_by(ReviewAction.id.desc())
        .limit(1)
    )
    return latest or cell.label


def _review_cell(
    s: Session, status: ReviewStatus, row: Classification, body: ReviewBody, who: Reviewer, now: datetime
) -> None:
    index = body.cell_index
    assert index is not None
    cell = s.get(ResultCell, (row.id, index))
    if cell is None:
        count = s.scalar(select(func.count()).where(ResultCell.classification_id == row.id)) or 0
        has = f"has {count} cells (cell_index 0 to {count - 1})" if count else "has no cells (not a field)"
        raise ReviewError(422, "unknown_cell", f"cell_index {index} does not exist: this result {has}")
    what = f"cell {index + 1}"
    before = cell_label(s, cell)
    if body.action == Action.COMMENT.value:
        _comment_required(body)
        after = before
    else:
        _refuse_final(status)
        after = _label_choice(body, before, list(cell.probabilities), what)
    _record(
        s, status, row, who, Action(body.action), now,
        from_label=before, to_label=after, from_state=status.state, comment=body.comment, cell_index=index,
    )  # fmt: skip


def sign_blocker(status: ReviewStatus, settings: ReviewSettings, who: Reviewer | None) -> str | None:
    """Why ``who`` (anyone, when None) may not sign the result now; None when they may."""
    if status.state == State.FINAL.value:
        return f"already final: signed by {status.second_signed_by or status.signed_by}"
    if status.current_label == UNSURE:
        return "the result is labelled unsure: reclassify it to a label before signing"
    priority = Priority(status.priority)
    if priority in UNREVIEWED_REASON and status.reviewed_by_id is None:
        return f"{UNREVIEWED_REASON[priority]} needs a review before sign-off: confirm or reclassify it first"
    if (
        status.state == State.NEEDS_SECOND.value
        and settings.two_person_rule
        and who is not None
        and who.user_id == status.signed_by_id
    ):
        return "two-person rule: you signed first; a different reviewer must sign second"
    return None


def sign(
    s: Session,
    result_id: uuid.UUID,
    body: SignBody,
    who: Reviewer,
    settings: ReviewSettings,
    now: datetime,
) -> ReviewStatus:
    """Sign result ``result_id``: final, or (two-person rule, a result involving a positive) the
    first signature, after which another person's signature makes it final."""
    row = find_result(s, result_id)
    status = status_of(s, row, settings, lock=True)
    _check_version(s, status, body.version)
    blocker = sign_blocker(status, settings, who)
    if blocker is not None:
        raise ReviewError(409, "cannot_sign", f"not signed: {blocker}")
    from_state = status.state
    label = status.current_label
    action = Action.SIGN
    if status.state == State.NEEDS_SECOND.value:
        action = Action.SECOND_SIGN
        status.second_signed_by_id, status.second_signed_by = who.user_id, who.username
        status.second_signed_at = now
        status.state = State.FINAL.value
    else:
        status.signed_by_id, status.signed_by, status.signed_at = who.user_id, who.username, now
        two_needed = settings.two_person_rule and settings.involves_positive(row.label, label)
        status.state = State.NEEDS_SECOND.value if two_needed else State.FINAL.value
    _record(
        s, status, row, who, action, now,
        from_label=label, to_label=label, from_state=from_state, comment=body.comment,
    )  # fmt: skip
    return status
