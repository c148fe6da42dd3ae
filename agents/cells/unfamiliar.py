"""The out-of-distribution flag: scores, the field's flag, and "never a confident negative".

An input (single image or cell crop) is *unfamiliar* when its score under the model's OOD statistics
(:class:`shared.ood.OodModel`, higher = stranger) is above the manifest's ``ood.threshold``. A
crop whose features cannot be scored (NaN or infinite: a broken device) scores ``+inf``: it is
unfamiliar and reports no score.

A field is unfamiliar when at least ``ood.field_unfamiliar_fraction`` of its cells are. Its
``ood_score`` is the k-th highest cell score with ``k = ceil(fraction * cells)``: the field is
unfamiliar exactly when that score is above the threshold, as for a single image, so the score and
the flag never disagree. (The maximum would flag a field for one odd cell, the median would hide a
quarter of strange cells; with the default fraction 0.25 the score is the upper quartile.) A field
without cells has nothing to score: it is not unfamiliar, and it is low-confidence anyway.

A result that is unfamiliar and says the negative label is always ``low_confidence``: an input the
model does not know must never read as a confident "normal".
"""

from __future__ import annotations

import math

import numpy as np

from shared.bundle import Manifest
from shared.ood import OodModel

#: The negative label of a model without a ``cells`` section, when it has one of this name.
DEFAULT_NEGATIVE_LABEL = "normal"


def negative_label(manifest: Manifest) -> str | None:
    """The label an unfamiliar result may not say confidently: the decision rule's negative label,
    else ``normal`` when the model has it; None when the model names no negative label (then every
    unfamiliar result is low-confidence)."""
    if manifest.cells is not None:
        return manifest.cells.decision.negative_label
    return DEFAULT_NEGATIVE_LABEL if DEFAULT_NEGATIVE_LABEL in manifest.labels else None


def score(ood: OodModel | None, features: np.ndarray | None) -> np.ndarray | None:
    """``[n]`` float64 scores of ``[n, d]`` features (``+inf`` for a row that cannot be scored);
    None when the model has no OOD statistics or the backend gave no features."""
    if ood is None or features is None:
        return None
    return ood.score(np.asarray(features).reshape(len(features), -1))


def reported(value: float) -> float | None:
    """A score as results carry it: None for one that is not finite."""
    return float(value) if math.isfinite(value) else None


def field_flag(scores: np.ndarray, threshold: float, fraction: float) -> tuple[bool, float]:
    """(unfamiliar, field score) of a field whose cells scored ``scores`` (see the module docstring).

    Raises:
        ValueError: ``scores`` is empty (a field without cells has no score).
    """
    if scores.size == 0:
        raise ValueError("a field without cells has no OOD score")
    # The small slack keeps 0.3 * 10 (= 3.0000000000000004) at 3 cells.
    k = min(max(1, math.ceil(fraction * scores.size - 1e-9)), scores.size)
    kth = float(np.sort(scores)[::-1][k - 1])
    return kth > threshold, kth


def low_confidence(
    confidence: float, threshold: float, unfamiliar: bool, label: str, negative: str | None
) -> bool:
    """Whether a result is flagged low-confidence: below ``threshold``, or unfamiliar and negative."""
    if confidence < threshold:
        return True
    return unfamiliar and (negative is None or label == negative)
