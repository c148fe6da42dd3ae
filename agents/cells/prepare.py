"""A field's crops: the white cells the finder finds, cut at native scale and preprocessed.

Each crop is a ``finder.crop_side_px`` square around a cell's centre (reflect-padded at the field's
edges), then goes through the same ``crop_and_resize`` as a single-cell image: a crop reaches the
network exactly as the training crops did. A field with more cells than ``finder.max_cells`` (capped
to :data:`shared.schemas.MAX_CELLS`, what one result can carry) keeps the largest nuclei.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from agents.jobs import Box
from shared.cells.finder import FoundCell, cut_crop, find_cells
from shared.cells.spec import FinderSpec
from shared.preprocessing import PreprocessingSpec, crop_and_resize
from shared.schemas import MAX_CELLS


@dataclass(frozen=True)
class FieldCrops:
    """The network inputs of one field.

    Attributes:
        crops: ``[n, S, S, 3]`` uint8 BGR, one per kept cell, largest nucleus first.
        boxes: each kept cell's box (x, y, width, height) within the field, in the same order.
        found: cells the finder found (more than ``n`` when the field was over ``max_cells``).
        finder_ms: time spent finding the cells (the rest of the preparation is cutting crops).
    """

    crops: np.ndarray
    boxes: list[Box]
    found: int
    finder_ms: float


def cell_limit(finder: FinderSpec) -> int:
    """The most cells of one field that are classified."""
    return min(finder.max_cells, MAX_CELLS)


def clamp_box(box: tuple[int, int, int, int], width: int, height: int) -> Box:
    """``box`` moved inside a ``width`` x ``height`` image, at least 1 x 1 (results refuse others)."""
    x, y, w, h = (int(v) for v in box)
    x, y = min(max(x, 0), width - 1), min(max(y, 0), height - 1)
    return x, y, max(1, min(w, width - x)), max(1, min(h, height - y))


def largest(cells: list[FoundCell], limit: int) -> list[FoundCell]:
    """The ``limit`` cells with the largest nuclei, largest first (ties keep the finder's order)."""
    return sorted(cells, key=lambda c: -c.nucleus_area_px)[:limit]


def prepare_field(image_bgr: np.ndarray, finder: FinderSpec, preprocessing: PreprocessingSpec) -> FieldCrops:
    """Find the cells of the ``[H, W, 3]`` uint8 field ``image_bgr`` and preprocess a crop of each.

    Raises:
        ValueError: the image is not ``[H, W, 3]`` (e.g. a single-channel camera frame).
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image_bgr.shape}")
    t0 = time.perf_counter()
    found = find_cells(image_bgr, finder)
    finder_ms = (time.perf_counter() - t0) * 1e3
    kept = largest(found, cell_limit(finder))
    size = preprocessing.image_size
    crops = np.empty((len(kept), size, size, 3), dtype=np.uint8)
    height, width = image_bgr.shape[:2]
    boxes: list[Box] = []
    for i, cell in enumerate(kept):
        square = cut_crop(image_bgr, cell.centre, finder.crop_side_px)
        crops[i] = crop_and_resize(square, size, preprocessing.central_fraction)
        boxes.append(clamp_box(cell.box, width, height))
    return FieldCrops(crops, boxes, len(found), finder_ms)
