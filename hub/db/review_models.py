"""The review tables: where each result stands in review (``review_status``) and every reviewer's
action on it (``review_actions``, append-only).

``review_status`` has one row per result, made at ingest (:func:`hub.review.statuses.add_review_statuses`)
and for older results by migration 0009 or on first use (:func:`hub.review.statuses.ensure_status`).
It copies the result's ``captured_at`` and a triage ``priority`` so the review queue, "not final,
most urgent first, oldest first", is one range of ``ix_review_status_queue`` per state; it goes
with its result (``ON DELETE CASCADE``: retention). ``version`` grows with every action, so a form
or API call made on a stale view is refused instead of overwriting what someone else did.

``review_actions`` is the audit trail: who (user id, name and role at the time), when, which result
(and which cell of a field), what (confirm, reclassify, comment, sign, second_sign), from which
label and state to which. Rows are only ever added: the ORM refuses to update or delete one
(:class:`AppendOnlyError`), nothing in the code issues an UPDATE or DELETE on the table
(tests/hub/test_review_service.py scans for it), and it has no foreign key to the result, so the
trail outlives the result's retention (``result_uuid`` still names it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, SmallInteger, String, Text, Uuid, event, text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base
from hub.db.results import Classification as Classification  # the table the status refers to
from hub.db.types import UTCDateTime


class ReviewStatus(Base):
    """One result's place in review: its state, triage priority, current label and who did what."""

    __tablename__ = "review_status"
    # the queue: ``state = :s ORDER BY priority, captured_at, result_id`` with a keyset cursor
    __table_args__ = (
        Index("ix_review_status_queue", "state", "priority", "captured_at", "result_id"),
        Index("ix_review_status_state_captured", "state", "captured_at", "result_id"),
        Index("ix_review_status_label_captured", "current_label", "captured_at", "result_id"),
    )

    result_id: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("classifications.id", ondelete="CASCADE", name="fk_review_status_result"),
        primary_key=True,
        autoincrement=False,
    )
    #: unreviewed | reviewed | needs_second | final (:class:`hub.review.policy.State`)
    state: Mapped[str] = mapped_column(String(16))
    #: 0 flagged (unfamiliar), 1 positive, 2 low confidence, 3 confident negative
    priority: Mapped[int] = mapped_column(SmallInteger)
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: the model's label until a reviewer reclassifies the result
    current_label: Mapped[str] = mapped_column(String(64))
    reviewed_by_id: Mapped[int | None] = mapped_column(Integer)
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: the (first) signature: final, or needs_second under the two-person rule
    signed_by_id: Mapped[int | None] = mapped_column(Integer)
    signed_by: Mapped[str | None] = mapped_column(String(64))
    signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    second_signed_by_id: Mapped[int | None] = mapped_column(Integer)
    second_signed_by: Mapped[str | None] = mapped_column(String(64))
    second_signed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class ReviewAction(Base):
    """One reviewer action, never changed or removed once written."""

    __tablename__ = "review_actions"
    __table_args__ = (Index("ix_review_actions_result", "result_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: ``classifications.id`` (no foreign key: the trail outlives the result)
    result_id: Mapped[int] = mapped_column(Integer)
    result_uuid: Mapped[uuid.UUID] = mapped_column(Uuid())
    #: 0-based cell of a field result; NULL: the action is on the whole result
    cell_index: Mapped[int | None] = mapped_column(Integer)
    #: confirm | reclassify | comment | sign | second_sign
    action: Mapped[str] = mapped_column(String(16))
    from_label: Mapped[str | None] = mapped_column(String(64))
    to_label: Mapped[str | None] = mapped_column(String(64))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    user_id: Mapped[int] = mapped_column(Integer)
    username: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())


class AppendOnlyError(RuntimeError):
    """Code tried to change or remove a review action: the trail is append-only (add a new row)."""


def _refuse(verb: str) -> Any:
    def listener(_mapper: Any, _connection: Any, target: ReviewAction) -> None:
        raise AppendOnlyError(
            f"review action {target.id} cannot be {verb}: the review trail is append-only; "
            "record a correction as a new action"
        )

    return listener


event.listen(ReviewAction, "before_update", _refuse("updated"))
event.listen(ReviewAction, "before_delete", _refuse("deleted"))
