"""A cell model judged on whole fields: the finder, the field chain, and whole-image mode beside it.

On held-out fields with ground truth (``--eval-fields``, :mod:`trainer.fields`'s sidecars):

* **finder**: :func:`trainer.finder_eval.evaluate_finder` (recall and precision of the white-cell
  boxes at IoU 0.5, with intervals);
* **field**: what an agent does with a field, step for step: :func:`shared.cells.finder.find_cells`,
  :func:`shared.cells.finder.cut_crop` around each cell at native scale, the same
  ``crop_and_resize`` as every image, the exported **FP32 IR** at f32 inference precision, then
  :func:`shared.cells.decision.decide`. A field is called positive when the decision's label is a
  positive label; its score (for the ROC) is ``decide().scores`` of the positive label (the
  strongest cell). Images smaller than ``field_min_side_px`` are classified whole (argmax), as agents do;
* **whole_image**: the same fields the way a whole-image model sees them (central crop + resize of
  the whole field, one inference, the argmax label): the baseline the cell chain has to beat.

Both levels report sensitivity and specificity with Wilson intervals and ROC-AUC with its
Hanley-McNeil interval (:func:`trainer.evaluate.compute_metrics` on positive vs negative). With the
model's OOD statistics, the share of cells and of fields flagged unfamiliar is reported too (these
fields are in-distribution: a high share means the threshold or the finder's crops are off).

A field that cannot be read or analysed is logged, counted (``failed``) and left out.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shared.cells.decision import decide
from shared.cells.finder import cut_crop, find_cells
from shared.cells.spec import CellAnalysisSpec, InputKind
from shared.logs import Progress, kv
from shared.ood import OodModel
from shared.preprocessing import crop_and_resize
from trainer.evaluate import REPORT_FILE, compute_metrics
from trainer.export import IrRunner
from trainer.fields import FieldTruth, decode_field, load_fields
from trainer.finder_eval import evaluate_finder
from trainer.train_config import CellOptions

log = logging.getLogger(__name__)

FIELDS_REPORT_FILE = "fields.json"
FIELDS_CSV_FILE = "fields.csv"


@dataclass(frozen=True)
class Unfamiliar:
    """The model's OOD statistics and the calibrated threshold (``score > threshold`` is flagged)."""

    model: OodModel
    threshold: float
    field_fraction: float  # a field is unfamiliar when at least this share of its cells is


@dataclass(frozen=True)
class FieldOutcome:
    """One field through both chains."""

    name: str
    truth: str
    kind: str  # how an agent would take it: field (finder) or cell (whole)
    cells: int
    label: str
    score: float  # the positive label's field score
    positive_cells: int
    unfamiliar_cells: int | None
    unfamiliar: bool | None
    whole_label: str
    whole_score: float
    whole_unfamiliar: bool | None
    ms: float


def _classify(runner: IrRunner, crop: np.ndarray, ood: Unfamiliar | None) -> tuple[np.ndarray, bool | None]:
    if ood is None:
        return runner.predict(crop), None
    probs, features = runner.predict_with_features(crop)
    return probs, bool(ood.model.score(features[None])[0] > ood.threshold)


def analyse_field(
    image: np.ndarray,
    runner: IrRunner,
    labels: list[str],
    spec: CellAnalysisSpec,
    image_size: int,
    ood: Unfamiliar | None = None,
) -> dict[str, Any]:
    """One field as an agent analyses it (see the module docstring) and in whole-image mode.

    Returns:
        ``kind``, ``cells``, ``label``, ``score``, ``positive_cells``, ``unfamiliar_cells``,
        ``unfamiliar``, ``whole_label``, ``whole_score``, ``whole_unfamiliar``.
    """
    rule = spec.decision
    whole, whole_flag = _classify(runner, crop_and_resize(image, image_size), ood)
    whole_probs = dict(zip(labels, (float(p) for p in whole), strict=True))
    kind = spec.kind_of(image.shape[1], image.shape[0])
    if kind == InputKind.FIELD:
        cell_probs: list[dict[str, float]] = []
        flags: list[bool] = []
        for cell in find_cells(image, spec.finder):
            crop = crop_and_resize(cut_crop(image, cell.centre, spec.finder.crop_side_px), image_size)
            probs, flagged = _classify(runner, crop, ood)
            cell_probs.append(dict(zip(labels, (float(p) for p in probs), strict=True)))
            flags.append(bool(flagged))
        decision = decide(cell_probs, labels, rule)
        n_flagged = sum(flags) if ood is not None else None
        unfamiliar = (
            bool(flags) and n_flagged is not None and n_flagged / len(flags) >= ood.field_fraction
            if ood is not None
            else None
        )
        label, cells, positive_cells = decision.label, len(cell_probs), decision.positive_cells
        score = max(decision.scores[lab] for lab in rule.positive_labels)
    else:  # a small image is one cell to an agent: classified whole (argmax), as before cell models
        score = max(whole_probs[lab] for lab in rule.positive_labels)
        label = max(whole_probs, key=lambda k: whole_probs[k])
        cells, positive_cells, n_flagged, unfamiliar = 1, int(label in rule.positive_labels), None, whole_flag
    return {
        "kind": kind.value,
        "cells": cells,
        "label": label,
        "score": float(score),
        "positive_cells": positive_cells,
        "unfamiliar_cells": n_flagged,
        "unfamiliar": unfamiliar,
        "whole_label": max(whole_probs, key=lambda k: whole_probs[k]),
        "whole_score": max(whole_probs[lab] for lab in rule.positive_labels),
        "whole_unfamiliar": whole_flag,
    }


def binary_metrics(
    outcomes: list[FieldOutcome], spec: CellAnalysisSpec, whole: bool
) -> dict[str, Any] | None:
    """Sensitivity, specificity (Wilson), ROC-AUC (Hanley-McNeil) of one chain; None without fields."""
    if not outcomes:
        return None
    rule = spec.decision
    positive = "/".join(rule.positive_labels)
    names = [positive, rule.negative_label]
    y_true = [0 if o.truth in rule.positive_labels else 1 for o in outcomes]
    y_pred = [0 if (o.whole_label if whole else o.label) in rule.positive_labels else 1 for o in outcomes]
    scores = [o.whole_score if whole else o.score for o in outcomes]
    metrics = compute_metrics(y_true, y_pred, names, positive, scores=scores)
    out: dict[str, Any] = {
        **metrics.summary(),
        "positive_label": positive,
        "negative_label": rule.negative_label,
        "confusion_matrix": metrics.confusion_matrix,
        "ci95": metrics.ci95,
    }
    flags = [o.whole_unfamiliar if whole else o.unfamiliar for o in outcomes]
    if all(f is not None for f in flags):
        out["unfamiliar_rate"] = round(float(np.mean([bool(f) for f in flags])), 6)
    return out


def evaluate_fields(
    fields: list[FieldTruth],
    ir_xml: str | Path,
    labels: list[str],
    spec: CellAnalysisSpec,
    image_size: int,
    ood: Unfamiliar | None = None,
) -> tuple[dict[str, Any], list[FieldOutcome]]:
    """Finder, field-chain and whole-image metrics on ``fields`` (see the module docstring).

    Returns:
        ``({"finder": ..., "field": ..., "whole_image": ...}, per-field outcomes)``.

    Raises:
        ValueError: the decision rule names a label the model does not have, or no field could be
            analysed.
    """
    runner = IrRunner(ir_xml, inference_precision="f32")
    outcomes: list[FieldOutcome] = []
    failed = 0
    with Progress(len(fields), "field-eval", log, unit="field") as progress:
        for truth in fields:
            try:
                start = time.perf_counter()
                image = decode_field(truth)
                got = analyse_field(image, runner, labels, spec, image_size, ood)
                ms = (time.perf_counter() - start) * 1000.0
                outcomes.append(
                    FieldOutcome(name=truth.image.name, truth=truth.label, ms=round(ms, 1), **got)
                )
            except Exception as exc:  # noqa: BLE001 - one bad field must not end the evaluation (counted)
                failed += 1
                log.warning(kv("field_eval_failed", image=truth.image, error=f"{type(exc).__name__}: {exc}"))
            progress.update()
    if not outcomes:
        raise ValueError(f"none of the {len(fields)} evaluation fields could be analysed; see the log")
    flagged_cells = [o.unfamiliar_cells for o in outcomes if o.unfamiliar_cells is not None]
    cells_total = sum(o.cells for o in outcomes if o.kind == InputKind.FIELD.value)
    field = binary_metrics(outcomes, spec, whole=False) or {}
    field.update(
        failed=failed,
        cells_classified=cells_total,
        cells_per_field=round(cells_total / len(outcomes), 2),
        ms_per_field=round(float(np.mean([o.ms for o in outcomes])), 1),
        decision_rule=spec.decision.describe(),
    )
    if flagged_cells and cells_total:
        field["unfamiliar_cell_rate"] = round(sum(flagged_cells) / cells_total, 6)
    finder = evaluate_finder(fields, spec.finder).to_json()
    metrics = {"finder": finder, "field": field, "whole_image": binary_metrics(outcomes, spec, whole=True)}
    log.info(
        kv(
            "fields_evaluated",
            fields=len(outcomes),
            failed=failed,
            field_sensitivity=field.get("sensitivity"),
            field_specificity=field.get("specificity"),
            whole_sensitivity=(metrics["whole_image"] or {}).get("sensitivity"),
            whole_specificity=(metrics["whole_image"] or {}).get("specificity"),
        )
    )
    return metrics, outcomes


def write_field_report(eval_dir: Path, metrics: dict[str, Any], outcomes: list[FieldOutcome]) -> None:
    """``eval/fields.json`` (metrics), ``eval/fields.csv`` (one row per field) and the metrics under
    ``cells`` in ``eval/report.json`` when it exists."""
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / FIELDS_REPORT_FILE).write_text(json.dumps(metrics, indent=2))
    with open(eval_dir / FIELDS_CSV_FILE, "w", newline="") as fh:
        names = list(FieldOutcome.__dataclass_fields__)
        writer = csv.DictWriter(fh, fieldnames=names)
        writer.writeheader()
        for outcome in outcomes:
            writer.writerow(asdict(outcome))
    report_path = eval_dir / REPORT_FILE
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        report["cells"] = metrics
        report_path.write_text(json.dumps(report, indent=2))


def cells_step(
    options: CellOptions,
    labels: list[str],
    ir_xml: Path,
    image_size: int,
    eval_dir: Path,
    ood: Unfamiliar | None = None,
) -> CellAnalysisSpec:
    """The manifest's ``cells`` section: ``options`` with the metrics on ``options.eval_fields``.

    Without evaluation fields the section carries no metrics (and a warning says so).

    Raises:
        ValueError: the decision rule names a label the model does not have, the fields folder is
            unusable (:class:`trainer.fields.FieldTruthError`), or no field could be analysed.
    """
    options.check_labels(labels)
    spec = options.spec()
    if options.eval_fields is None:
        log.warning(
            kv(
                "cells_not_evaluated",
                effect="the bundle's cells section has no field-level metrics",
                fix="pass --eval-fields DIR (held-out fields with ground truth)",
            )
        )
        return spec
    fields = load_fields(options.eval_fields)
    metrics, outcomes = evaluate_fields(fields, ir_xml, labels, spec, image_size, ood)
    write_field_report(eval_dir, metrics, outcomes)
    return options.spec(metrics)
