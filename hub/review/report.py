"""Review rows -> the JSON shapes of :mod:`hub.review.schemas` (used by the API and the dashboard)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.db.results import ResultCell
from hub.db.review_models import Classification, ReviewAction, ReviewStatus
from hub.review.policy import Priority, Reviewer, ReviewSettings, choosable
from hub.review.service import LABEL_ACTIONS, sign_blocker

#: the newest actions a review shows (a result's trail is short; this bounds a hostile one)
MAX_HISTORY = 1000


def action_json(a: ReviewAction) -> dict[str, Any]:
    return {
        "id": a.id,
        "action": a.action,
        "cell_index": a.cell_index,
        "from_label": a.from_label,
        "to_label": a.to_label,
        "from_state": a.from_state,
        "to_state": a.to_state,
        "comment": a.comment,
        "username": a.username,
        "role": a.role,
        "at": a.at.isoformat(),
    }


def history(s: Session, result_id: int, limit: int = MAX_HISTORY) -> tuple[list[ReviewAction], bool]:
    """The newest ``limit`` actions on a result, oldest first, and whether older ones were left out."""
    rows = list(
        s.scalars(
            select(ReviewAction)
            .where(ReviewAction.result_id == result_id)
            .order_by(ReviewAction.id.desc())
            .limit(limit + 1)
        )
    )
    return rows[:limit][::-1], len(rows) > limit


def reviewed_cells(s: Session, row: Classification, actions: list[ReviewAction]) -> list[dict[str, Any]]:
    """Each cell a reviewer confirmed or reclassified, with the model's label and the latest one."""
    latest: dict[int, str] = {}
    for a in actions:  # oldest first: the last one wins
        if a.cell_index is not None and a.action in LABEL_ACTIONS and a.to_label is not None:
            latest[a.cell_index] = a.to_label
    if not latest:
        return []
    cells = s.scalars(
        select(ResultCell).where(
            ResultCell.classification_id == row.id, ResultCell.cell_index.in_(list(latest))
        )
    )
    model = {c.cell_index: c.label for c in cells}
    return [
        {"cell_index": i, "model_label": model[i], "current_label": label}
        for i, label in sorted(latest.items())
        if i in model
    ]


def cell_count(s: Session, row: Classification) -> int:
    return s.scalar(select(func.count()).where(ResultCell.classification_id == row.id)) or 0


def review_json(
    s: Session,
    row: Classification,
    status: ReviewStatus,
    settings: ReviewSettings,
    who: Reviewer | None,
    not_a_reviewer: str = "your role may not sign results",
) -> dict[str, Any]:
    """A result's review as :class:`~hub.review.schemas.ReviewOut`; ``who`` is the caller, for
    ``can_sign`` and ``sign_blocker`` (None: someone who may not review, ``not_a_reviewer`` says why)."""
    actions, truncated = history(s, row.id)
    blocker = sign_blocker(status, settings, who) if who is not None else not_a_reviewer
    return {
        "result_id": str(row.result_id),
        "state": status.state,
        "priority": Priority(status.priority).text,
        "model_label": row.label,
        "current_label": status.current_label,
        "labels": choosable(row.probabilities),
        "version": status.version,
        "two_person_rule": settings.two_person_rule,
        "reviewed_by": status.reviewed_by,
        "reviewed_at": _iso(status.reviewed_at),
        "signed_by": status.signed_by,
        "signed_at": _iso(status.signed_at),
        "second_signed_by": status.second_signed_by,
        "second_signed_at": _iso(status.second_signed_at),
        "can_sign": blocker is None,
        "sign_blocker": blocker,
        "cells": reviewed_cells(s, row, actions),
        "history": [action_json(a) for a in actions],
        "history_truncated": truncated,
    }


def queue_item_json(status: ReviewStatus, row: Classification) -> dict[str, Any]:
    """One row of the queue as :class:`~hub.review.schemas.QueueItem`."""
    return {
        "result_id": str(row.result_id),
        "state": status.state,
        "priority": Priority(status.priority).text,
        "captured_at": row.captured_at.isoformat(),
        "agent_id": row.agent_id,
        "lab": row.lab,
        "image_name": row.image_name,
        "specimen_id": row.specimen_id,
        "input_kind": row.input_kind,
        "model_label": row.label,
        "current_label": status.current_label,
        "confidence": row.confidence,
        "low_confidence": row.low_confidence,
        "unfamiliar": row.unfamiliar,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "cell_counts": row.cell_counts,
        "reviewed_by": status.reviewed_by,
        "signed_by": status.signed_by,
        "version": status.version,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
