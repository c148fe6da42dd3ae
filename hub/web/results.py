"""The result page (``/results/<result_id>``): one classified image, as a reader needs to judge it.

A field (``input_kind`` field) is drawn as an inline SVG, each cell's box numbered and coloured by
its label (the model's blast-positive labels, from its manifest's decision rule, in the warning
colour; an unfamiliar cell dashed), with one card per cell: number, label, confidence, a bar of its
probabilities, the unfamiliar badge. Above them, the field's decision (label, confidence, the rule
in words, cells per label), the unfamiliar flag and score against the model's threshold, and what
produced the result (model, precision, device, timings). A single-cell image shows its
probabilities and flag.

The result carries cell boxes but not the image's size, so the SVG's frame runs from the image's
top-left corner (the boxes' origin) to the farthest box corner (plus 1 %): the boxes keep their true
positions and proportions, and the frame is the smallest the cells prove the image to be.

When the hub holds the result's evidence image (keyed by its ``image_sha256``) and the signed-in
person's role may see images (:data:`hub.api.evidence.EVIDENCE_READERS`, and admin), the image is
drawn instead, in an SVG whose view box is the image's own pixel size, with the cell boxes over it
at their reported coordinates; zoom.js zooms (wheel, buttons) and pans (drag) by changing that
view box. A preview image (the agent's downscaled JPEG) is shown without boxes, since the result
does not carry the original's size to scale them by. Without an image the "image not received"
notice stays (never a stand-in); a viewer is told images are not shown to their role.

Every value reaches the HTML through Jinja's autoescaping; CSS classes are made here from label
positions, never from label text.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, abort, render_template, url_for
from sqlalchemy import select

from hub.api.evidence import EVIDENCE_READERS
from hub.api.serialize import classification_detail_json
from hub.db.models import Classification, ModelVersion, ResultCell
from hub.evidence.model import EvidenceImage
from hub.extensions import hub_ext
from hub.roles import Role
from hub.web.guards import login_required, me
from hub.web.model_sections import cells_spec, ood_spec
from hub.web.review import review_panel_context

bp = Blueprint("results", __name__, template_folder="../templates")
#: colours for labels that are not blast-positive (style.css: .lab-0 ... .lab-5)
PALETTE = 6
POSITIVE = "lab-pos"
#: the frame's margin past the farthest box corner, so its outline is not clipped
FRAME_MARGIN = 0.01
#: box numbers are this fraction of the frame's longer side (about 14 px on a full-width field)
FONT_FRACTION = 1 / 60


def label_classes(labels: Sequence[str], positive: Sequence[str]) -> dict[str, str]:
    """A CSS class per label: :data:`POSITIVE` for blast-positive ones, a palette colour for the rest."""
    out: dict[str, str] = {}
    others = 0
    for label in labels:
        if label in out:
            continue
        if label in positive:
            out[label] = POSITIVE
        else:
            out[label] = f"lab-{others % PALETTE}"
            others += 1
    return out


def probability_bar(
    probabilities: Mapping[str, float], order: Sequence[str], classes: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Stacked segments (``x``, ``width`` in 0..100) of a probability bar, in label order."""
    segments = []
    at = 0.0
    for label in order:
        p = probabilities.get(label)
        if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            continue
        width = min(p * 100.0, 100.0 - at)
        segments.append(
            {"label": label, "p": p, "x": round(at, 3), "width": round(width, 3), "css": classes[label]}
        )
        at += width
    return segments


def field_frame(cells: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    """The SVG's view box: from (0, 0) to the farthest box corner plus :data:`FRAME_MARGIN`."""
    if not cells:
        return None
    right = max(c["box"][0] + c["box"][2] for c in cells)
    bottom = max(c["box"][1] + c["box"][3] for c in cells)
    margin = max(right, bottom) * FRAME_MARGIN
    width, height = right + margin, bottom + margin
    return {
        "width": round(width, 1),
        "height": round(height, 1),
        "font": round(max(width, height) * FONT_FRACTION, 1),
        "extent_width": right,
        "extent_height": bottom,
    }


def number_y(top: int, font: float) -> float:
    """Baseline of a box's number: just above the box, or inside it when the box is too near the
    frame's top for the number to fit above."""
    return round(top - 0.2 * font if top >= font else top + font, 1)


def result_view(result: Mapping[str, Any], manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything the page draws, from the result's JSON (with cells) and its model's manifest."""
    cells_section = cells_spec(manifest) if manifest else None
    ood_section = ood_spec(manifest) if manifest else None
    cells = result.get("cells") or []
    counts = result.get("cell_counts") or {}
    # the model's label order, then any other label the result names (a model since deleted)
    order: list[str] = list(manifest.get("labels", [])) if manifest else []
    for names in [result["probabilities"], counts, *(c["probabilities"] for c in cells), [result["label"]]]:
        order += [label for label in names if label not in order]
    order += [c["label"] for c in cells if c["label"] not in order]
    positive = list(cells_section.decision.positive_labels) if cells_section else []
    classes = label_classes(order, positive)
    frame = field_frame(cells)
    cards = [
        {
            "number": c["index"] + 1,
            "box": c["box"],
            "text_y": number_y(c["box"][1], frame["font"] if frame else 0.0),
            "label": c["label"],
            "css": classes[c["label"]],
            "confidence": c["confidence"],
            "unfamiliar": c["unfamiliar"],
            "ood_score": c["ood_score"],
            "bar": probability_bar(c["probabilities"], order, classes),
        }
        for c in cells
    ]
    return {
        "is_field": result.get("input_kind") == "field",
        "model_known": manifest is not None,
        "positive": positive,
        "positive_known": cells_section is not None,
        "classes": classes,
        "frame": frame,
        "cards": cards,
        "bar": probability_bar(result["probabilities"], order, classes),
        "counts": [(label, counts[label], classes.get(label, "")) for label in order if label in counts],
        "threshold": ood_section.threshold if ood_section else None,
        "timings": [(name.removesuffix("_ms"), ms) for name, ms in (result.get("timings") or {}).items()],
    }


def evidence_view(image: EvidenceImage | None, role: Role, on_disk: bool) -> dict[str, Any]:
    """How the page shows the result's image: ``state`` is ``shown`` (with ``url``, ``width``,
    ``height``, ``boxes``: whether the cell boxes can be drawn over it), ``missing`` (the hub has
    no image, or lost its file) or ``forbidden`` (it has one; the role may not see images)."""
    if image is None or not on_disk or not image.width or not image.height:
        return {"state": "missing"}
    if role is not Role.ADMIN and role not in EVIDENCE_READERS:
        return {"state": "forbidden"}
    return {
        "state": "shown",
        "url": url_for("api.get_evidence", key=image.sha256),
        "width": image.width,
        "height": image.height,
        "kind": image.kind,
        "boxes": image.kind == "original",
    }


@bp.get("/results/<result_id>")
@login_required
def result_page(result_id: str) -> str:
    """One result with its cells (every signed-in role)."""
    try:
        key = uuid.UUID(result_id)
    except ValueError:
        abort(404, description=f"{result_id[:64]!r} is not a result id; open a result from the Fleet page")
    with hub_ext.services.db.transaction() as s:  # a result stored before review gets its status here
        row = s.scalar(select(Classification).where(Classification.result_id == key))
        if row is None:
            abort(404, description=f"no result {key}; it may have been removed by retention")
        cells = s.scalars(
            select(ResultCell).where(ResultCell.classification_id == row.id).order_by(ResultCell.cell_index)
        ).all()
        manifest = s.scalar(
            select(ModelVersion.manifest).where(
                ModelVersion.name == row.model_name, ModelVersion.version == row.model_version
            )
        )
        result = classification_detail_json(row, list(cells))
        panel = review_panel_context(s, row, page="results.result_page")
        image = s.get(EvidenceImage, row.image_sha256)
    store = hub_ext.services.evidence
    on_disk = image is not None and store.path(image.sha256).is_file()
    evidence = evidence_view(image, me().role, on_disk)
    return render_template(
        "result.html", r=result, v=result_view(result, manifest), review_panel=panel, evidence=evidence
    )
