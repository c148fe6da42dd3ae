"""Confidence intervals and ROC analysis for the evaluation report (plain numpy, no TensorFlow).

* Proportions (accuracy, sensitivity, specificity, precision) get the 95 % Wilson score
  interval, which stays inside [0, 1] and behaves at 0/n and n/n where the normal
  approximation fails.
* ROC-AUC is the Mann-Whitney statistic (a tie counts one half), equal to the trapezoidal area
  under the ROC curve; its 95 % interval is Hanley & McNeil's (1982) normal approximation,
  clipped to [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of ``successes / n``; ``None`` when ``n == 0``.

    Raises:
        ValueError: ``successes`` outside ``[0, n]``.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} must be within [0, n={n}]")
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def roc_auc(is_positive: Sequence[bool], scores: Sequence[float]) -> float | None:
    """P(random positive's score > random negative's), ties 1/2; ``None`` unless both classes occur."""
    pos = np.asarray(scores, np.float64)[np.asarray(is_positive, bool)]
    neg = np.asarray(scores, np.float64)[~np.asarray(is_positive, bool)]
    if pos.size == 0 or neg.size == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def auc_interval(auc: float, n_pos: int, n_neg: int, z: float = Z95) -> tuple[float, float]:
    """Hanley & McNeil's 95 % interval of an AUC from ``n_pos`` positives and ``n_neg`` negatives."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (
        n_pos * n_neg
    )
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


def roc_curve(is_positive: Sequence[bool], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """``(false-positive rates, true-positive rates)`` from (0, 0) to (1, 1), a point per distinct score."""
    y = np.asarray(is_positive, bool)
    s = np.asarray(scores, np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    thresholds = np.unique(s)[::-1]
    tpr = [0.0] + [float((s[y] >= t).sum() / n_pos) if n_pos else 0.0 for t in thresholds]
    fpr = [0.0] + [float((s[~y] >= t).sum() / n_neg) if n_neg else 0.0 for t in thresholds]
    return np.asarray(fpr), np.asarray(tpr)
