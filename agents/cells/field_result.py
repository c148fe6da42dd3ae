"""A field's result fields: its cells, their counts, the decision and the unfamiliar flag.

The field's ``label``, ``confidence`` and ``probabilities`` are :func:`shared.cells.decision.decide`
under the manifest's rule (a field without cells: the negative label at confidence 0, so it is
low-confidence, never a confident negative). Each cell reports its crop's own argmax, probabilities
and, when the model has OOD statistics, its score and flag (:mod:`agents.cells.unfamiliar`).

A result must fit one MQTT payload (:data:`shared.schemas.MAX_PAYLOAD_BYTES`): a field whose cells
would not (many cells of a model with many labels) reports each cell's probabilities for its own
label and the rule's labels only, and if that is still too much, the cells with the strongest
positive evidence that fit; ``cell_counts`` and the decision always cover every classified cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from agents.backends import Inference
from agents.cells import unfamiliar
from agents.jobs import Box
from shared.bundle import Manifest
from shared.cells.decision import decide
from shared.cells.spec import InputKind
from shared.ood import OodModel
from shared.schemas import MAX_PAYLOAD_BYTES, CellResult, ClassificationResult
from shared.topics import Kind

#: Room kept below the payload limit for what the transport adds around a result.
PAYLOAD_SLACK_BYTES = 1024


def probabilities_of(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """Label -> probability, clipped to [0, 1] (and 0 for a NaN) as results require."""
    return {lab: min(max(float(np.nan_to_num(p)), 0.0), 1.0) for lab, p in zip(labels, probs, strict=True)}


def features_of(inferences: Sequence[Inference]) -> np.ndarray | None:
    """``[n, d]`` features of ``inferences``; None when any lacks them (or there are none)."""
    feats = [i.features for i in inferences]
    if not feats or any(f is None for f in feats):
        return None
    return np.stack([np.asarray(f).reshape(-1) for f in feats if f is not None])


def field_fields(
    manifest: Manifest,
    boxes: Sequence[Box],
    inferences: Sequence[Inference],
    ood: OodModel | None,
    threshold: float,
) -> dict[str, Any]:
    """The result fields of a field whose crops at ``boxes`` gave ``inferences`` (same order).

    Raises:
        ValueError: the manifest has no ``cells`` section, or boxes and outputs differ in number.
    """
    spec = manifest.cells
    if spec is None:
        raise ValueError(f"model {manifest.name} {manifest.version} has no cells section: no field analysis")
    if len(boxes) != len(inferences):
        raise ValueError(f"{len(boxes)} cell boxes but {len(inferences)} crop outputs")
    labels = manifest.labels
    cell_probs = [probabilities_of(labels, i.probabilities) for i in inferences]
    decision = decide(cell_probs, labels, spec.decision)
    scores = unfamiliar.score(ood, features_of(inferences)) if inferences else None
    limit = manifest.ood.threshold if manifest.ood is not None else math.inf
    flagged, field_score = False, None
    if scores is not None and manifest.ood is not None:
        flagged, kth = unfamiliar.field_flag(scores, limit, manifest.ood.field_unfamiliar_fraction)
        field_score = unfamiliar.reported(kth)
    cells = []
    for i, (box, probs) in enumerate(zip(boxes, cell_probs, strict=True)):
        best = max(probs, key=lambda k: probs[k])
        cell_score = None if scores is None else float(scores[i])
        cells.append(
            CellResult(
                box=box,
                label=best,
                confidence=probs[best],
                probabilities=probs,
                unfamiliar=cell_score is not None and cell_score > limit,
                ood_score=None if cell_score is None else unfamiliar.reported(cell_score),
            )
        )
    probabilities = {lab: min(max(float(decision.scores.get(lab, 0.0)), 0.0), 1.0) for lab in labels}
    confidence = probabilities[decision.label]
    negative = unfamiliar.negative_label(manifest)
    return {
        "input_kind": InputKind.FIELD,
        "label": decision.label,
        "confidence": confidence,
        "probabilities": probabilities,
        "low_confidence": unfamiliar.low_confidence(confidence, threshold, flagged, decision.label, negative),
        "cells": cells,
        "cell_counts": decision.counts,
        "decision_rule": spec.decision.describe(),
        "unfamiliar": flagged,
        "ood_score": field_score,
    }


def _evidence(cell: CellResult, positives: Sequence[str]) -> float:
    return max(cell.probabilities.get(lab, 0.0) for lab in positives) if positives else cell.confidence


def fit_payload(result: ClassificationResult, manifest: Manifest) -> ClassificationResult:
    """``result``, with its cells reduced as the module docstring says when its JSON is too large."""
    limit = MAX_PAYLOAD_BYTES[Kind.RESULTS] - PAYLOAD_SLACK_BYTES
    if not result.cells or len(result.to_json()) <= limit:
        return result
    rule = manifest.cells.decision if manifest.cells is not None else None
    keep = set(rule.positive_labels) | {rule.negative_label} if rule is not None else set()
    slim = [
        c.model_copy(
            update={"probabilities": {k: v for k, v in c.probabilities.items() if k in keep or k == c.label}}
        )
        for c in result.cells
    ]
    result = result.model_copy(update={"cells": slim})
    if len(result.to_json()) <= limit:
        return result
    positives = list(rule.positive_labels) if rule is not None else []
    ranked = sorted(slim, key=lambda c: -_evidence(c, positives))
    per_cell = max(1, len(result.to_json()) // max(len(slim), 1))
    n = min(len(ranked), max(0, limit // per_cell))
    while n > 0 and len(result.model_copy(update={"cells": ranked[:n]}).to_json()) > limit:
        n = max(0, n - max(1, n // 10))
    return result.model_copy(update={"cells": ranked[:n]})
