"""``leukonet agent classify``'s work on one file: the same decisions as the running agent.

A model with a ``cells`` section gets each image as its kind (:func:`agents.cells.kinds.input_kind`):
a field is analysed cell by cell with the manifest's finder and decision rule, a single cell whole;
with an ``ood`` section every input (and every cell) is scored for the unfamiliar flag. A model
without those sections classifies every image whole, as before.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from agents.backends import Backend, Inference
from agents.cells.field_result import field_fields
from agents.cells.kinds import input_kind
from agents.cells.prepare import prepare_field
from agents.results import single_fields
from shared.bundle import Manifest
from shared.cells.spec import InputKind
from shared.ood import OodModel
from shared.preprocessing import crop_and_resize, decode_image


def _inferences(engine: Backend, batch: np.ndarray) -> list[Inference]:
    out = engine.run(batch)
    return [out[i] for i in range(len(out))]


def as_json(value: Any) -> Any:
    """``json.dumps`` default for result fields: pydantic models and enums as their JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def classify_file(
    engine: Backend, manifest: Manifest, ood: OodModel | None, path: Path, threshold: float
) -> dict[str, Any]:
    """The result fields of ``path`` (label, confidence, probabilities, flags; cells for a field).

    Raises:
        OSError, ImageDecodeError, BackendError: the file cannot be read, decoded or inferred.
        KindRefused: the model does not take this kind of image.
    """
    image = decode_image(path.read_bytes(), path.name)
    kind = input_kind(manifest, path.name, image.shape[1], image.shape[0])
    if kind is InputKind.FIELD:
        assert manifest.cells is not None
        prepared = prepare_field(image, manifest.cells.finder, manifest.preprocessing)
        outputs = _inferences(engine, prepared.crops) if len(prepared.crops) else []
        return field_fields(manifest, prepared.boxes, outputs, ood, threshold)
    spec = manifest.preprocessing
    crop = crop_and_resize(image, spec.image_size, spec.central_fraction)
    return single_fields(manifest, kind, _inferences(engine, crop[np.newaxis])[0], ood, threshold)
