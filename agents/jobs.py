"""What travels through the pipeline: a :class:`Job` in, an :class:`Outcome` out to its source's hook,
and the :class:`~shared.schemas.ClassificationResult` built from an inferred image."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path

import numpy as np

from agents.models import ActiveModel
from shared.clock import utcnow
from shared.schemas import ClassificationResult, Timings


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
    """An image between its decode thread and the writer: the job, the model it runs on, its timings."""

    job: Job
    active: ActiveModel
    sha256: str
    decode_ms: float
    preprocess_ms: float


Finished = tuple[InFlight, np.ndarray | None, float, BaseException | None]


def build_result(
    ctx: InFlight, probs: np.ndarray, inference_ms: float, agent_id: str, lab: str, threshold: float
) -> ClassificationResult:
    """The result of one inferred image: label, confidence, the model and precision that ran, timings."""
    labels = ctx.active.manifest.labels
    probabilities = {label: min(max(float(p), 0.0), 1.0) for label, p in zip(labels, probs, strict=True)}
    best = labels[int(np.argmax(probs))]
    confidence = probabilities[best]
    return ClassificationResult(
        agent_id=agent_id,
        lab=lab,
        image_name=ctx.job.name[:512],
        image_sha256=ctx.sha256,
        label=best,
        confidence=confidence,
        probabilities=probabilities,
        low_confidence=confidence < threshold,
        model_name=ctx.active.name,
        model_version=ctx.active.version,
        device=ctx.active.backend.device,
        precision=ctx.active.backend.precision,
        execution_precision=ctx.active.backend.execution_precision,
        timings=Timings(
            decode_ms=ctx.decode_ms,
            preprocess_ms=ctx.preprocess_ms,
            inference_ms=max(inference_ms, 0.0),
            total_ms=(time.monotonic() - ctx.job.seen_at) * 1e3,
        ),
        captured_at=ctx.job.captured_at,
    )
