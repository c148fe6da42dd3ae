"""The review API's request and response models (also what the dashboard's forms are validated with)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hub.review.policy import LABEL_CHARS, MAX_COMMENT, ReviewActionName

#: the most cells a result carries (shared.schemas caps a field's cells at 256)
MAX_CELLS = 256
MAX_VERSION = 2**31 - 1
PriorityName = Literal["flagged", "positive", "low_confidence", "negative"]
StateName = Literal["unreviewed", "reviewed", "needs_second", "final"]


def _no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("contains a NUL character (\\u0000); remove it")
    return value


class ReviewBody(BaseModel):
    """``POST /classifications/<result_id>/review``: confirm, reclassify or comment on a result, or
    on one cell of a field (``cell_index``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: ReviewActionName = Field(title="confirm | reclassify | comment")
    label: str | None = Field(
        None,
        min_length=1,
        max_length=LABEL_CHARS,
        title="reclassify: the new label, one of the model's labels, unsure or other",
    )
    comment: str = Field(
        "", max_length=MAX_COMMENT, title="free text kept in the audit trail (comment: required)"
    )
    cell_index: int | None = Field(
        None, ge=0, lt=MAX_CELLS, title="0-based cell of a field result; absent: the whole result"
    )
    version: int = Field(
        ge=1, le=MAX_VERSION, title="the review's version as you read it; 409 when it changed since"
    )

    no_nul = field_validator("label", "comment")(_no_nul)


class SignBody(BaseModel):
    """``POST /classifications/<result_id>/sign``: sign the result (final, or the first of two
    signatures under the two-person rule)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(
        ge=1, le=MAX_VERSION, title="the review's version as you read it; 409 when it changed since"
    )
    comment: str = Field("", max_length=MAX_COMMENT, title="optional, kept in the audit trail")

    no_nul = field_validator("comment")(_no_nul)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ReviewActionOut(_Out):
    """One entry of the audit trail."""

    id: int
    action: Literal["confirm", "reclassify", "comment", "sign", "second_sign"]
    cell_index: int | None = Field(title="0-based cell of a field; null: the whole result")
    from_label: str | None
    to_label: str | None
    from_state: StateName
    to_state: StateName
    comment: str
    username: str
    role: str
    at: datetime


class CellReviewOut(_Out):
    """A cell whose label a reviewer confirmed or changed."""

    cell_index: int
    model_label: str
    current_label: str


class ReviewOut(_Out):
    """A result's review: where it stands, who did what, what the caller may do next."""

    result_id: str
    state: StateName
    priority: PriorityName = Field(
        title="triage: flagged (unfamiliar) > positive > low_confidence > negative"
    )
    model_label: str
    current_label: str
    labels: list[str] = Field(title="labels a reviewer may choose: the model's, unsure, other")
    version: int = Field(title="send back with the next action")
    two_person_rule: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    signed_by: str | None
    signed_at: datetime | None
    second_signed_by: str | None
    second_signed_at: datetime | None
    can_sign: bool = Field(title="whether the caller may sign now")
    sign_blocker: str | None = Field(title="why the caller may not sign now, or null")
    cells: list[CellReviewOut] = Field(title="cells reviewers confirmed or reclassified")
    history: list[ReviewActionOut] = Field(title="the audit trail, oldest first (the newest 1000 at most)")
    history_truncated: bool


class QueueItem(_Out):
    """One result in the review queue."""

    result_id: str
    state: StateName
    priority: PriorityName
    captured_at: datetime
    agent_id: str
    lab: str
    image_name: str
    specimen_id: str | None
    input_kind: str | None
    model_label: str
    current_label: str
    confidence: float
    low_confidence: bool
    unfamiliar: bool
    model_name: str
    model_version: str
    cell_counts: dict[str, int] | None
    reviewed_by: str | None
    signed_by: str | None
    version: int


class QueuePage(_Out):
    """One page of the review queue, most urgent first (priority, then oldest first)."""

    view: Literal["open", "unreviewed", "reviewed", "needs_second", "final"]
    items: list[QueueItem]
    next_cursor: str | None = Field(title="pass as cursor (same view) for the next page; null on the last")
