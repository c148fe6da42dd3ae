"""The review rules as data: states, actions, triage priorities, labels, and the ``review`` settings.

States (``review_status.state``)::

    unreviewed --confirm/reclassify--> reviewed --sign--> final
    unreviewed --sign--> final                     (a confident negative only)
    reviewed --sign--> needs_second --second sign, another person--> final   (two-person rule)
    needs_second --reclassify--> reviewed           (the first signature no longer holds)

A result *needs a review* before anyone may sign it when the model called it positive, flagged it
unfamiliar, or was not confident (its triage priority is below :attr:`Priority.NEGATIVE`). With
the two-person rule, a result that *involves a positive* (the model's label or the current label
is not a negative label) needs two signatures by different people. ``unsure`` is never signed.

This module is pydantic-only (no database, no Flask), so :mod:`hub.config` may import it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the labels a reviewer may choose besides the model's own
UNSURE = "unsure"
OTHER = "other"
EXTRA_LABELS = (UNSURE, OTHER)
#: the longest comment kept with an action (characters)
MAX_COMMENT = 2000
LABEL_CHARS = 64


class State(str, Enum):
    """Where a result stands in review."""

    UNREVIEWED = "unreviewed"
    REVIEWED = "reviewed"
    NEEDS_SECOND = "needs_second"
    FINAL = "final"


#: states of the open queue (everything not final)
OPEN_STATES = (State.UNREVIEWED, State.NEEDS_SECOND, State.REVIEWED)


class Action(str, Enum):
    """What a reviewer did (``review_actions.action``)."""

    CONFIRM = "confirm"
    RECLASSIFY = "reclassify"
    COMMENT = "comment"
    SIGN = "sign"
    SECOND_SIGN = "second_sign"


#: the actions of ``POST .../review`` (signing has its own route)
ReviewActionName = Literal["confirm", "reclassify", "comment"]


class Priority(IntEnum):
    """Triage order of the queue: lower comes first."""

    FLAGGED = 0  # unfamiliar: the input is unlike the training data
    POSITIVE = 1
    LOW_CONFIDENCE = 2
    NEGATIVE = 3  # a confident negative

    @property
    def text(self) -> str:
        return self.name.lower()


class ReviewSettings(BaseModel):
    """The config file's ``review`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    two_person_rule: bool = Field(
        False,
        title="a result involving a positive label needs a second signature by a different person",
    )
    negative_labels: tuple[str, ...] = Field(
        ("normal",),
        min_length=1,
        max_length=32,
        title="labels that mean no disease (every other label counts as positive)",
    )
    low_confidence_below: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        title="also treat results below this confidence as low confidence (besides the agent's flag)",
    )

    @field_validator("negative_labels")
    @classmethod
    def _labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        for label in labels:
            if not label or len(label) > LABEL_CHARS or not label.isprintable():
                raise ValueError(
                    f"negative label {label[:80]!r}: use 1 to {LABEL_CHARS} printable characters"
                )
            if label in EXTRA_LABELS:
                raise ValueError(
                    f"{label!r} is a reviewer's label, not a model's: it cannot be a negative label"
                )
        return labels

    def is_negative(self, label: str) -> bool:
        return label in self.negative_labels

    def involves_positive(self, model_label: str, current_label: str) -> bool:
        """Whether the model or the reviewers call the result anything but negative."""
        return not (self.is_negative(model_label) and self.is_negative(current_label))

    def priority(self, *, label: str, confidence: float, low_confidence: bool, unfamiliar: bool) -> Priority:
        """The triage priority of a result as the model reported it."""
        if unfamiliar:
            return Priority.FLAGGED
        if not self.is_negative(label):
            return Priority.POSITIVE
        below = self.low_confidence_below
        if low_confidence or (below is not None and confidence < below):
            return Priority.LOW_CONFIDENCE
        return Priority.NEGATIVE


def settings_of(config: object) -> ReviewSettings:
    """The ``review`` section of a hub config, or the defaults when the config has none."""
    section = getattr(config, "review", None)
    return section if isinstance(section, ReviewSettings) else ReviewSettings()


def choosable(model_labels: Iterable[str]) -> list[str]:
    """The labels a reviewer may choose: the model's (in its order), then ``unsure`` and ``other``."""
    own = [label for label in model_labels if label not in EXTRA_LABELS]
    return [*own, *EXTRA_LABELS]


@dataclass(frozen=True)
class Reviewer:
    """The person acting: a user id (reviews are signed by people), their name and role."""

    user_id: int
    username: str
    role: str
