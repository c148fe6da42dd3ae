"""The :class:`~shared.schemas.ClassificationResult` of an inferred image or field.

A single image reports the argmax of its probabilities. ``input_kind`` is ``cell`` when the model's
manifest has a ``cells`` section (it picked the kind by the image's size) and absent for a model
without one: such a model classifies every image whole, as before, and the agent claims no kind
for it. A field reports its cells and the decision (:mod:`agents.cells.field_result`). With OOD
statistics in the model every input is scored (:mod:`agents.cells.unfamiliar`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from agents.backends import Inference
from agents.cells import unfamiliar
from agents.cells.field_result import field_fields, fit_payload, probabilities_of
from agents.jobs import Finished
from shared.bundle import Manifest
from shared.cells.spec import InputKind
from shared.ood import OodModel
from shared.schemas import ClassificationResult, Timings


def single_fields(
    manifest: Manifest, kind: InputKind | None, inference: Inference, ood: OodModel | None, threshold: float
) -> dict[str, Any]:
    """The result fields of one image classified whole (a single cell, or any image of an old model)."""
    probabilities = probabilities_of(manifest.labels, inference.probabilities)
    label = manifest.labels[int(np.argmax(np.nan_to_num(inference.probabilities, nan=-1.0)))]
    confidence = probabilities[label]
    feats = None if inference.features is None else np.asarray(inference.features).reshape(1, -1)
    scores = unfamiliar.score(ood, feats)
    flagged, ood_score = False, None
    if scores is not None and manifest.ood is not None:
        flagged, ood_score = bool(scores[0] > manifest.ood.threshold), unfamiliar.reported(float(scores[0]))
    negative = unfamiliar.negative_label(manifest)
    return {
        "input_kind": kind,
        "label": label,
        "confidence": confidence,
        "probabilities": probabilities,
        "low_confidence": unfamiliar.low_confidence(confidence, threshold, flagged, label, negative),
        "unfamiliar": flagged,
        "ood_score": ood_score,
    }


def build_result(finished: Finished, agent_id: str, lab: str, threshold: float) -> ClassificationResult:
    """The result of ``finished`` (no error): the model and precision that ran, timings, outputs.

    Raises:
        ValueError: the outputs do not fit the model (e.g. a field's boxes and outputs differ).
    """
    ctx = finished.ctx
    manifest, ood = ctx.active.manifest, ctx.active.ood
    if ctx.kind is InputKind.FIELD:
        fields = field_fields(manifest, ctx.boxes, finished.inferences, ood, threshold)
    else:
        if len(finished.inferences) != 1:
            raise ValueError(f"{ctx.job.name}: {len(finished.inferences)} outputs for one image")
        fields = single_fields(manifest, ctx.kind, finished.inferences[0], ood, threshold)
    backend = ctx.active.backend
    result = ClassificationResult(
        agent_id=agent_id,
        lab=lab,
        image_name=ctx.job.name[:512],
        image_sha256=ctx.sha256,
        model_name=ctx.active.name,
        model_version=ctx.active.version,
        device=backend.device,
        precision=backend.precision,
        execution_precision=backend.execution_precision,
        timings=Timings(
            decode_ms=ctx.decode_ms,
            preprocess_ms=ctx.preprocess_ms,
            inference_ms=max(finished.inference_ms, 0.0),
            total_ms=(time.monotonic() - ctx.job.seen_at) * 1e3,
        ),
        captured_at=ctx.job.captured_at,
        specimen_id=ctx.specimen_id,
        **fields,
    )
    return fit_payload(result, manifest)
