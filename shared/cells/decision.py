"""The per-field decision: from each cell's probabilities to the field's label, scores and counts.

Field scores: for each positive label, the highest probability any cell gives it (the strongest
evidence on the field); the negative label gets one minus the highest of those. With two labels the
scores are a probability pair. A field where the rule does not fire although a cell came close is
therefore reported with a low confidence, and a field with no cells at all has confidence 0: it is
never a confident negative.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from shared.cells.spec import DecisionRule


@dataclass(frozen=True)
class FieldDecision:
    label: str
    confidence: float
    scores: dict[str, float]  # per label, see the module docstring
    counts: dict[str, int]  # cells per predicted (argmax) label
    positive_cells: int  # cells counting under the rule


def _argmax(probs: dict[str, float]) -> str:
    return max(probs, key=lambda k: probs[k])


def _top_positive(cell: dict[str, float], rule: DecisionRule) -> str:
    return max(rule.positive_labels, key=lambda lab: cell.get(lab, 0.0))


def decide(cells: Sequence[dict[str, float]], labels: Sequence[str], rule: DecisionRule) -> FieldDecision:
    """Apply ``rule`` to the per-cell probabilities ``cells`` (each: label -> probability).

    Raises:
        ValueError: the rule names a label the model does not have.
    """
    missing = [lab for lab in (*rule.positive_labels, rule.negative_label) if lab not in labels]
    if missing:
        raise ValueError(
            f"decision rule names labels the model does not have: {missing} (labels: {list(labels)})"
        )
    best = {lab: max((c.get(lab, 0.0) for c in cells), default=0.0) for lab in rule.positive_labels}
    strongest = max(best.values(), default=0.0)
    counting = [c for c in cells if max(c.get(lab, 0.0) for lab in rule.positive_labels) >= rule.threshold]
    n = len(counting)
    if rule.kind == "any":
        fired = n >= 1
    elif rule.kind == "count":
        fired = n >= rule.min_count
    else:
        fired = bool(cells) and n / len(cells) >= rule.min_fraction and n >= 1
    scores = dict.fromkeys(labels, 0.0)
    scores.update(best)
    scores[rule.negative_label] = 1.0 - strongest if cells else 0.0
    if fired:
        votes = Counter(_top_positive(c, rule) for c in counting)
        label = max(rule.positive_labels, key=lambda lab: (votes[lab], best[lab]))
    else:
        label = rule.negative_label
    counts = Counter(_argmax(c) for c in cells)
    return FieldDecision(
        label=label,
        confidence=scores[label],
        scores=scores,
        counts={lab: counts.get(lab, 0) for lab in labels},
        positive_cells=n,
    )
