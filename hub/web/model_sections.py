"""What the dashboard shows of a model's ``cells`` and ``ood`` manifest sections.

The registry stores each manifest as JSON after validating it at upload; the sections are read back
through their pydantic models (:class:`~shared.cells.spec.CellAnalysisSpec`,
:class:`~shared.cells.spec.OodSpec`). Their metrics are free-form (whatever the trainer measured),
so every figure is formatted defensively: a number, a number with its interval, or a dash; anything
else is shown as short text, never trusted as markup (templates autoescape it).

The trainer writes a level's metrics either with ``<name>_ci`` intervals beside the figures or with
one ``ci95`` mapping (``trainer.evaluate.Metrics``), and AUC as ``auc`` or ``roc_auc``: both are read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.cells.spec import CellAnalysisSpec, OodSpec
from shared.logs import kv

log = logging.getLogger(__name__)

#: (heading, keys tried in order) of the finder's figures
FINDER_FIGURES = (
    ("recall (cells found / cells there)", ("recall",)),
    ("precision (found cells that are cells)", ("precision",)),
    ("mean IoU of matched boxes", ("mean_matched_iou",)),
    ("IoU to count a match", ("iou",)),
    ("ms per field", ("ms_per_field",)),
    ("fields evaluated", ("fields",)),
)
#: (heading, keys tried in order) of the field-level and whole-image figures
LEVEL_FIGURES = (
    ("sensitivity", ("sensitivity",)),
    ("specificity", ("specificity",)),
    ("AUC", ("auc", "roc_auc")),
    ("positive fields", ("n_pos",)),
    ("negative fields", ("n_neg",)),
    ("fields", ("n",)),
    ("flagged unfamiliar", ("unfamiliar_rate",)),
)
TEXT_MAX = 80


def cells_spec(manifest: Mapping[str, Any]) -> CellAnalysisSpec | None:
    """The manifest's ``cells`` section, or None when absent or unreadable (logged)."""
    return _section(manifest, "cells", CellAnalysisSpec)


def ood_spec(manifest: Mapping[str, Any]) -> OodSpec | None:
    """The manifest's ``ood`` section, or None when absent or unreadable (logged)."""
    return _section(manifest, "ood", OodSpec)


def _section(manifest: Mapping[str, Any], key: str, model: type[Any]) -> Any:
    raw = manifest.get(key)
    if raw is None:
        return None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        log.warning(
            kv("manifest_section_unreadable", section=key, model=manifest.get("name"), error=str(exc)[:300])
        )
        return None


def number(value: Any, digits: int = 4) -> str | None:
    """``value`` as a compact number, or None when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return str(value) if isinstance(value, int) else f"{value:.{digits}g}"


def interval(value: Any) -> str | None:
    """A ``[low, high]`` pair as ``low–high``, or None."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = number(value[0], 3), number(value[1], 3)
        if low is not None and high is not None:
            return f"{low}–{high}"
    return None


def figure(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """The first of ``keys`` present in ``metrics``, with its 95 % interval when one is given."""
    ci95 = metrics.get("ci95")
    for key in keys:
        if key not in metrics:
            continue
        value = metrics[key]
        shown = number(value)
        if shown is None:
            return "—" if value is None else str(value)[:TEXT_MAX]
        ci = interval(metrics.get(f"{key}_ci"))
        if ci is None and isinstance(ci95, Mapping):
            ci = interval(ci95.get(key))
        return f"{shown} (95 % CI {ci})" if ci else shown
    return "—"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def model_sections(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the models page shows of a model's cell analysis and unfamiliar flag; None without either.

    Returns:
        ``{"cells": {...} | None, "ood": [(heading, text)] | None}``; ``cells`` holds the rule in
        words, the input kinds, the finder's settings and figures, and one row per level figure
        with the field-level text beside the whole-image text.
    """
    cells, ood = cells_spec(manifest), ood_spec(manifest)
    if cells is None and ood is None:
        return None
    out: dict[str, Any] = {"cells": None, "ood": None}
    if cells is not None:
        metrics = cells.metrics
        finder = _mapping(metrics.get("finder"))
        field, whole = (_with_counts(_mapping(metrics.get(k))) for k in ("field", "whole_image"))
        out["cells"] = {
            "rule": cells.decision.describe(),
            "negative_label": cells.decision.negative_label,
            "input_kinds": ", ".join(k.value for k in cells.input_kinds),
            "field_min_side_px": cells.field_min_side_px,
            "crop_side_px": cells.finder.crop_side_px,
            "max_cells": cells.finder.max_cells,
            "finder_method": cells.finder.method,
            "finder": [
                (heading, figure(finder, keys)) for heading, keys in FINDER_FIGURES if _has(finder, keys)
            ],
            "levels": [
                (heading, figure(field, keys), figure(whole, keys))
                for heading, keys in LEVEL_FIGURES
                if _has(field, keys) or _has(whole, keys)
            ],
        }
    if ood is not None:
        held_out = number(ood.held_out_flag_rate)
        out["ood"] = [
            ("method", ood.method),
            ("threshold (score above it: unfamiliar)", number(ood.threshold) or "—"),
            ("target flag rate", f"{ood.target_flag_rate:.2%}"),
            ("held-out flag rate", f"{ood.held_out_flag_rate:.2%}" if held_out is not None else "—"),
            ("calibration images", str(ood.calibration_images)),
            ("field unfamiliar when at least", f"{ood.field_unfamiliar_fraction:.0%} of its cells are"),
            ("feature", f"{ood.feature_output} ({ood.feature_dim} values)"),
        ]
    return out


def _with_counts(level: Mapping[str, Any]) -> Mapping[str, Any]:
    """``level`` with ``n_pos`` / ``n_neg`` from its 2x2 confusion matrix (positive first) when it
    does not give them itself."""
    matrix = level.get("confusion_matrix")
    if "n_pos" in level or not isinstance(matrix, list) or len(matrix) != 2:
        return level
    rows = [row for row in matrix if isinstance(row, list) and all(type(v) is int for v in row)]
    if len(rows) != 2:
        return level
    return {**level, "n_pos": sum(rows[0]), "n_neg": sum(rows[1])}


def _has(metrics: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    return any(k in metrics for k in keys)
