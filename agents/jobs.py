"""What travels through the pipeline: a :class:`Job` in, an :class:`Outcome` out to its source's hook,
and in between an :class:`InFlight` image whose outputs reach the writer as :class:`Finished`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

import numpy as np

from agents.backends import Inference
from agents.evidence.queue import Evidence
from agents.models import ActiveModel
from shared.cells.spec import InputKind
from shared.clock import utcnow
from shared.schemas import ClassificationResult

#: A cell's box in the decoded image: x, y, width, height in pixels.
Box = tuple[int, int, int, int]


class OutcomeKind(str, Enum):
    """What happened to a job."""

    CLASSIFIED = "classified"  # result committed to the outbox
    BAD_IMAGE = "bad_image"  # not decodable; ``error`` says why (a watch-folder file goes to failed/)
    NO_MODEL = "no_model"  # no active model yet: try again later
    UNAVAILABLE = "unavailable"  # inference or outbox failed: try again later
    ALREADY_DONE = "already_done"  # its result was committed before a crash; the file can move now
    GONE = "gone"  # the file disappeared before it was read
    STOPPED = "stopped"  # the agent is shutting down


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    result: ClassificationResult | None = None
    error: str = ""


@dataclass
class Job:
    """One image to classify: a file ``path``, uploaded ``data`` or a decoded BGR ``frame``.

    ``on_done`` is the source's per-job hook: called exactly once, on a pipeline thread, with the
    outcome; it must not block for long (it runs on the writer or a decode thread), and an exception
    from it is logged, never passed on.
    """

    name: str
    path: Path | None = None
    data: bytes | None = None
    frame: np.ndarray | None = None
    on_done: Callable[[Outcome], None] | None = None
    seen_at: float = field(default_factory=time.monotonic)
    captured_at: datetime = field(default_factory=utcnow)
    finished: bool = field(default=False, repr=False)


@dataclass
class InFlight:
    """An image between its decode thread and the writer: the job, the model it runs on, its timings.

    ``kind`` is what the model's manifest says the image is (None: a model without a ``cells``
    section, classified as one whole image as before). A field carries the ``boxes`` of the cells
    whose crops were submitted (largest first), ``found`` cells found in all, and ``finder_ms``.
    ``evidence`` and ``specimen_id`` go with the result (the evidence into the outbox's evidence
    queue, in the same commit).
    """

    job: Job
    active: ActiveModel
    sha256: str
    decode_ms: float
    preprocess_ms: float
    kind: InputKind | None = None
    boxes: list[Box] = field(default_factory=list)
    found: int = 0
    finder_ms: float = 0.0
    evidence: Evidence | None = None  # what the uploader sends the hub (None: evidence.mode none)
    specimen_id: str | None = None


@dataclass(frozen=True)
class Finished:
    """What the writer receives for one image: its outputs (one :class:`Inference` for a single
    image, one per box in ``ctx.boxes`` for a field), the inference time (for a field: the wall span
    from its first crop submitted to its last crop's outputs) and the error that failed it, if any."""

    ctx: InFlight
    inferences: list[Inference]
    inference_ms: float
    error: BaseException | None = None
