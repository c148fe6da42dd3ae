"""How well the white-cell finder finds the cells of fields with ground truth.

Found boxes are matched one-to-one to truth boxes at IoU >= ``iou`` (greedy, highest IoU first:
at IoU >= 0.5 a box can overlap at most one other box that much in practice, so greedy and
Hungarian matching agree). Recall = matched / truth cells, precision = matched / found cells, each
with a Wilson 95 % interval; recall per truth label (blasts found / blasts); the finder's time per
field (decoding excluded) on this process's OpenCV threads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shared.cells.finder import find_cells
from shared.cells.spec import FinderSpec
from shared.logs import Progress, kv
from trainer.fields import FieldTruth, decode_field
from trainer.stats import wilson_interval

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


def iou_matrix(a: Sequence[Box], b: Sequence[Box]) -> np.ndarray:
    """IoU of every box of ``a`` with every box of ``b`` (x, y, w, h): float64 [len(a), len(b)]."""
    if not a or not b:
        return np.zeros((len(a), len(b)))
    pa, pb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ax0, ay0, ax1, ay1 = pa[:, 0:1], pa[:, 1:2], pa[:, 0:1] + pa[:, 2:3], pa[:, 1:2] + pa[:, 3:4]
    bx0, by0, bx1, by1 = pb[:, 0], pb[:, 1], pb[:, 0] + pb[:, 2], pb[:, 1] + pb[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = pa[:, 2:3] * pa[:, 3:4] + pb[:, 2] * pb[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_boxes(found: Sequence[Box], truth: Sequence[Box], iou: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one (found index, truth index) pairs with IoU >= ``iou``, highest IoU first."""
    m = iou_matrix(found, truth)
    pairs: list[tuple[int, int]] = []
    if m.size == 0:
        return pairs
    order = np.argsort(-m, axis=None, kind="stable")
    used_f: set[int] = set()
    used_t: set[int] = set()
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < iou:
            break
        if i in used_f or j in used_t:
            continue
        used_f.add(i)
        used_t.add(j)
        pairs.append((i, j))
    return pairs


@dataclass
class FinderMetrics:
    """What :func:`evaluate_finder` measured; :meth:`to_json` is the flat report."""

    iou: float
    fields: int = 0
    skipped: int = 0
    truth_cells: int = 0
    found_cells: int = 0
    matched: int = 0
    truth_by_label: dict[str, int] = field(default_factory=dict)
    matched_by_label: dict[str, int] = field(default_factory=dict)
    matched_iou: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return self.matched / self.truth_cells if self.truth_cells else None

    @property
    def precision(self) -> float | None:
        return self.matched / self.found_cells if self.found_cells else None

    def to_json(self) -> dict[str, object]:
        def ci(k: int, n: int) -> list[float] | None:
            interval = wilson_interval(k, n)
            return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]

        return {
            "iou": self.iou,
            "fields": self.fields,
            "skipped": self.skipped,
            "truth_cells": self.truth_cells,
            "found_cells": self.found_cells,
            "matched": self.matched,
            "recall": None if self.recall is None else round(self.recall, 4),
            "recall_ci": ci(self.matched, self.truth_cells),
            "precision": None if self.precision is None else round(self.precision, 4),
            "precision_ci": ci(self.matched, self.found_cells),
            "recall_by_label": {
                lab: round(self.matched_by_label.get(lab, 0) / n, 4)
                for lab, n in sorted(self.truth_by_label.items())
                if n
            },
            "truth_by_label": dict(sorted(self.truth_by_label.items())),
            "mean_matched_iou": round(float(np.mean(self.matched_iou)), 4) if self.matched_iou else None,
            "ms_per_field": round(float(np.mean(self.ms)), 2) if self.ms else None,
            "ms_per_field_median": round(float(np.median(self.ms)), 2) if self.ms else None,
        }


def evaluate_finder(fields: Sequence[FieldTruth], spec: FinderSpec, iou: float = 0.5) -> FinderMetrics:
    """Run :func:`~shared.cells.finder.find_cells` on every field and score it against the truth.

    A field whose image cannot be read or checked is logged and counted in ``skipped``.

    Raises:
        ValueError: ``iou`` outside (0, 1].
    """
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"iou {iou} must be within (0, 1]")
    metrics = FinderMetrics(iou=iou)
    with Progress(len(fields), "finder-eval", log, unit="field") as progress:
        for truth in fields:
            try:
                image = decode_field(truth)
            except ValueError as exc:
                metrics.skipped += 1
                log.warning(kv("finder_eval_skipped", image=truth.image, error=exc))
                progress.update()
                continue
            start = time.perf_counter()
            found = find_cells(image, spec)
            metrics.ms.append((time.perf_counter() - start) * 1000.0)
            truth_boxes = [c.box for c in truth.cells]
            found_boxes = [c.box for c in found]
            pairs = match_boxes(found_boxes, truth_boxes, iou)
            ious = iou_matrix(found_boxes, truth_boxes)
            metrics.fields += 1
            metrics.truth_cells += len(truth_boxes)
            metrics.found_cells += len(found_boxes)
            metrics.matched += len(pairs)
            for cell in truth.cells:
                metrics.truth_by_label[cell.label] = metrics.truth_by_label.get(cell.label, 0) + 1
            for i, j in pairs:
                label = truth.cells[j].label
                metrics.matched_by_label[label] = metrics.matched_by_label.get(label, 0) + 1
                metrics.matched_iou.append(float(ious[i, j]))
            progress.update(recall=f"{metrics.recall or 0:.3f}")
    flat = {k: v for k, v in metrics.to_json().items() if not isinstance(v, dict)}
    log.info(kv("finder_evaluated", **flat))
    return metrics
