"""Synthetic smear *fields* with ground truth: the finder's test bed and a source of cell crops.

A field is what a microscope camera sees (ALL-IDB1: 2592 x 1944): about a thousand red cells and
a handful of white cells. Every cell is drawn by :mod:`trainer.synthetic`'s renderers at the native
scale of its 257 px single-cell images, so a crop cut around a white cell here looks like one of
those images. A leukemic field (``ALL``) holds 2-6 lymphoblasts among normal lymphocytes; a normal
field holds lymphocytes only. Stain, tint, illumination, blur and noise vary per field.

On disk each field is ``NAME.jpg`` (JPEG quality 95, as the single-cell training images and
ALL-IDB1's fields are: the finder and the classifier then see the same compression as in training
and on real cameras; a PNG of a noisy 5-megapixel field would be ~10x larger and slower to write)
and a sidecar ``NAME.json``::

    {"width": 2592, "height": 1944, "label": "ALL",
     "cells": [{"box": [x, y, w, h], "label": "ALL"}, ...]}

where ``box`` bounds the whole white cell (nucleus and cytoplasm) in pixels. White cells lie wholly
inside the field, may touch (overlapping by up to 15 % of their radii) but never bury each other.

Determinism: field ``i`` of :func:`write_fields` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.cells.finder import cut_crop
from shared.logs import Progress, kv
from shared.preprocessing import ImageDecodeError, decode_image
from trainer.synthetic import (
    CELL_IMAGE_PX,
    JPEG_QUALITY,
    LABELS,
    OD_PLASMA,
    OD_RBC,
    WBC_OCCLUSION,
    add_patch,
    draw_stain,
    finish,
    illumination,
    red_cell_density,
    red_cell_radius,
    white_cell,
)

log = logging.getLogger(__name__)

FIELD_WIDTH, FIELD_HEIGHT = 2592, 1944
MIN_FIELD_SIDE = 320  # room for a few 257 px cells
MAX_FIELD_SIDE = 10_000
RED_CELLS_PER_FIELD = 1000  # at 2592 x 1944; scaled with the area
WHITE_CELLS = (8, 20)  # per field, inclusive
BLASTS = (2, 6)  # per leukemic field, inclusive
TOUCH_PROBABILITY = 0.15  # a white cell placed against another one
MAX_SIDECAR_BYTES = 1 << 20
MAX_TRUTH_CELLS = 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


class FieldTruthError(ValueError):
    """A field's sidecar is missing, too large or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class TruthCell:
    box: tuple[int, int, int, int]  # x, y, w, h of the whole white cell, pixels
    label: str


@dataclass(frozen=True)
class FieldTruth:
    image: Path
    width: int
    height: int
    label: str
    cells: tuple[TruthCell, ...]


def _check_size(width: int, height: int) -> None:
    for name, side in (("width", width), ("height", height)):
        if not MIN_FIELD_SIDE <= side <= MAX_FIELD_SIDE:
            raise ValueError(
                f"field {name} {side} px is out of range; use {MIN_FIELD_SIDE}..{MAX_FIELD_SIDE} px"
            )


def _place(
    rng: np.random.Generator,
    placed: list[tuple[float, float, float]],
    radius: float,
    box: tuple[float, float, float, float],
    width: int,
    height: int,
) -> tuple[float, float] | None:
    """Where the centre of a cell of ``radius`` whose box (relative to its centre) is ``box`` goes:
    inside the field, apart from ``placed`` (x, y, r) cells or, now and then, touching one of them
    (centres 0.85-1.0 of the radii apart). ``None`` when the field has no room left."""
    bx0, by0, bx1, by1 = box
    for _ in range(300):
        if placed and rng.random() < TOUCH_PROBABILITY:
            ox, oy, orad = placed[int(rng.integers(len(placed)))]
            d = (orad + radius) * rng.uniform(0.85, 1.0)
            a = rng.uniform(0, 2 * np.pi)
            x, y = ox + d * np.cos(a), oy + d * np.sin(a)
            floor = 0.85
        else:
            x, y = rng.uniform(-bx0 + 2, width - bx1 - 2), rng.uniform(-by0 + 2, height - by1 - 2)
            floor = 1.1
        if not (x + bx0 >= 1 and y + by0 >= 1 and x + bx1 <= width - 1 and y + by1 <= height - 1):
            continue
        if all(np.hypot(x - px, y - py) >= floor * (pr + radius) - 1e-6 for px, py, pr in placed):
            return float(x), float(y)
    return None


def render_field(
    rng: np.random.Generator, label: str, width: int, height: int, n_white: int | None = None
) -> tuple[np.ndarray, list[TruthCell]]:
    """Render one ``width`` x ``height`` field of class ``label``: uint8 BGR and its white cells.

    ``n_white`` white cells (default: 8-20 at random); an ``ALL`` field makes 2-6 of them blasts.
    A small field may hold fewer cells than asked when no room is left (the truth lists what was
    drawn).

    Raises:
        ValueError: unknown ``label``, a side out of range, ``n_white`` negative, or an ``ALL``
            field without white cells.
    """
    if label not in LABELS:
        raise ValueError(f"unknown field label {label!r}; use one of {', '.join(LABELS)}")
    _check_size(width, height)
    if n_white is None:
        n_white = int(rng.integers(WHITE_CELLS[0], WHITE_CELLS[1] + 1))
    if n_white < 0 or (label == "ALL" and n_white < 1):
        raise ValueError(f"n_white {n_white} cannot make an {label} field; use at least 1 (0 for normal)")
    n_blasts = min(int(rng.integers(BLASTS[0], BLASTS[1] + 1)), n_white) if label == "ALL" else 0
    stain = draw_stain(rng)

    # Red cells as one density map (one channel: a third of the work of three), coloured below.
    rbc = np.zeros((height, width), np.float32)
    scale = width * height / (FIELD_WIDTH * FIELD_HEIGHT)
    for _ in range(int(round(RED_CELLS_PER_FIELD * scale * rng.uniform(0.85, 1.15)))):
        patch = red_cell_density(rng, red_cell_radius(rng))
        half = patch.shape[0] // 2
        cx, cy = rng.uniform(-half, width + half), rng.uniform(-half, height + half)
        add_patch(rbc, patch, int(cx) - half, int(cy) - half)

    # Blasts are placed first: a crowded small field runs out of room for lymphocytes, never for
    # the blasts that make it leukemic.
    kinds = [True] * n_blasts + [False] * (n_white - n_blasts)
    placed: list[tuple[float, float, float]] = []
    drawn: list[tuple[np.ndarray, np.ndarray, int, int]] = []  # od, mask, x0, y0
    truth: list[TruthCell] = []
    for blast in kinds:
        cell_od, mask = white_cell(rng, CELL_IMAGE_PX, blast, stain.hema)
        ys, xs = np.nonzero(mask > 0.5)
        if xs.size == 0:
            continue
        mx, my = float(xs.mean()), float(ys.mean())
        radius = float(np.sqrt(xs.size / np.pi))
        rel = (xs.min() - mx, ys.min() - my, xs.max() + 1 - mx, ys.max() + 1 - my)
        spot = _place(rng, placed, radius, rel, width, height)
        if spot is None:
            log.debug(kv("field_full", width=width, height=height, cells=len(truth)))
            continue
        x0, y0 = int(round(spot[0] - mx)), int(round(spot[1] - my))
        placed.append((spot[0], spot[1], radius))
        drawn.append((cell_od, mask, x0, y0))
        box = (x0 + int(xs.min()), y0 + int(ys.min()), int(xs.ptp()) + 1, int(ys.ptp()) + 1)
        truth.append(TruthCell(box=box, label="ALL" if blast else "normal"))
    # White cells hide the red cells beneath them, then lie on top (all occlusion first, so a
    # touching neighbour never dims a white cell drawn before it).
    for _, mask, x0, y0 in drawn:
        hide = 1.0 - WBC_OCCLUSION * mask
        ya, xa = max(y0, 0), max(x0, 0)
        region = rbc[ya : y0 + mask.shape[0], xa : x0 + mask.shape[1]]
        region *= hide[ya - y0 : ya - y0 + region.shape[0], xa - x0 : xa - x0 + region.shape[1]]
    rbc_od = OD_RBC * np.float32(stain.eosin)
    od = cv2.merge([rbc * rbc_od[0], rbc * rbc_od[1], rbc * rbc_od[2]])
    del rbc
    for cell_od, _, x0, y0 in drawn:
        add_patch(od, cell_od, x0, y0)

    # Transmission exp(-(od + plasma) * tint), the affine part in one pass, then the lamp.
    affine = np.zeros((3, 4), np.float32)
    affine[:, :3] = np.diag(-stain.tint)
    affine[:, 3] = -OD_PLASMA * stain.tint
    rgb: np.ndarray = cv2.transform(od, affine)
    flat = rgb.reshape(height, width * 3)
    cv2.exp(flat, dst=flat)
    rgb *= illumination(rng, height, width)[..., None]
    return finish(rng, rgb, fast_noise=True), truth


def _sidecar(truth: FieldTruth) -> dict[str, object]:
    return {
        "width": truth.width,
        "height": truth.height,
        "label": truth.label,
        "cells": [{"box": list(c.box), "label": c.label} for c in truth.cells],
    }


def write_fields(
    out_dir: str | Path,
    count: int,
    seed: int,
    width: int = FIELD_WIDTH,
    height: int = FIELD_HEIGHT,
    leukemic_fraction: float = 0.5,
) -> list[FieldTruth]:
    """Write ``count`` fields as ``out_dir/field-NNNNN.jpg`` + ``.json``; return their truth.

    Each field is ``ALL`` with probability ``leukemic_fraction``, drawn from ``(seed, i)`` alone.

    Raises:
        ValueError: ``count`` < 1, a fraction outside [0, 1], a side out of range, or ``out_dir``
            already holds fields (pick an empty folder so two sets never mix).
        OSError: a file cannot be written.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not 0.0 <= leukemic_fraction <= 1.0:
        raise ValueError(f"leukemic_fraction {leukemic_fraction} must be within [0, 1]")
    _check_size(width, height)
    out = Path(out_dir)
    if out.is_dir() and any(out.glob("*.json")):
        raise ValueError(f"{out} already holds field sidecars; generate into an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    fields: list[FieldTruth] = []
    with Progress(count, "fields", log, unit="field") as progress:
        for i in range(count):
            rng = np.random.default_rng([seed, i])
            label = "ALL" if rng.random() < leukemic_fraction else "normal"
            image, cells = render_field(rng, label, width, height)
            path = out / f"field-{i:05d}.jpg"
            if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise OSError(f"{path}: OpenCV could not write the image")
            truth = FieldTruth(image=path, width=width, height=height, label=label, cells=tuple(cells))
            path.with_suffix(".json").write_text(json.dumps(_sidecar(truth)) + "\n")
            fields.append(truth)
            progress.update()
    log.info(kv("fields_written", out=out, count=count, seed=seed, width=width, height=height))
    return fields


class _CellModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    box: tuple[int, int, int, int]
    label: str = Field(min_length=1, max_length=64)


class _SidecarModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    width: int = Field(ge=1, le=100_000)
    height: int = Field(ge=1, le=100_000)
    label: str = Field(min_length=1, max_length=64)
    cells: list[_CellModel] = Field(max_length=MAX_TRUTH_CELLS)


def read_sidecar(path: Path) -> FieldTruth:
    """One field's truth from ``path`` (``NAME.json``) and its image ``NAME.<jpg|png|...>``.

    Raises:
        FieldTruthError: too large, not JSON, wrong fields, a box outside the image, or no image.
    """
    fix = "regenerate it with `leukonet trainer fields generate` or fix the JSON"
    size = path.stat().st_size
    if size > MAX_SIDECAR_BYTES:
        raise FieldTruthError(f"{path}: {size} bytes is over the {MAX_SIDECAR_BYTES} byte limit; {fix}")
    try:
        model = _SidecarModel.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        msg = f"{path}: {where}: {first['msg']} ({exc.error_count()} errors); {fix}"
        raise FieldTruthError(msg) from None
    cells = []
    for k, cell in enumerate(model.cells):
        x, y, w, h = cell.box
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > model.width or y + h > model.height:
            raise FieldTruthError(
                f"{path}: cells.{k}.box {list(cell.box)} is empty or outside the "
                f"{model.width}x{model.height} image; {fix}"
            )
        cells.append(TruthCell(box=cell.box, label=cell.label))
    images = [path.with_suffix(s) for s in IMAGE_SUFFIXES if path.with_suffix(s).is_file()]
    if not images:
        raise FieldTruthError(
            f"{path}: no image beside it (looked for {path.stem} + {', '.join(IMAGE_SUFFIXES)}); "
            "put the field image next to its sidecar"
        )
    return FieldTruth(
        image=images[0], width=model.width, height=model.height, label=model.label, cells=tuple(cells)
    )


def load_fields(folder: str | Path) -> list[FieldTruth]:
    """Every field in ``folder`` (its ``*.json`` sidecars, sorted by name).

    Raises:
        FieldTruthError: the folder holds no sidecar, or one is malformed (named in the message).
    """
    root = Path(folder)
    if not root.is_dir():
        raise FieldTruthError(f"{root} is not a folder; pass the folder `fields generate` wrote")
    paths = sorted(root.glob("*.json"))
    if not paths:
        raise FieldTruthError(
            f"{root} holds no NAME.json sidecars; generate fields with `leukonet trainer fields generate`"
        )
    return [read_sidecar(p) for p in paths]


def decode_field(truth: FieldTruth) -> np.ndarray:
    """The field's image as uint8 BGR, checked against the size its sidecar states.

    Raises:
        FieldTruthError: unreadable image, or its size differs from the sidecar's.
    """
    try:
        image = decode_image(truth.image.read_bytes(), str(truth.image))
    except (OSError, ImageDecodeError) as exc:
        raise FieldTruthError(f"{truth.image}: {exc}") from None
    if image.shape[:2] != (truth.height, truth.width):
        raise FieldTruthError(
            f"{truth.image}: image is {image.shape[1]}x{image.shape[0]} but its sidecar says "
            f"{truth.width}x{truth.height}; regenerate the sidecar for this image"
        )
    return image


def box_centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    x, y, w, h = box
    return x + w / 2.0, y + h / 2.0


def cut_crops(fields: Sequence[FieldTruth], out_dir: str | Path, crop_side: int = 257) -> dict[str, int]:
    """Cut a ``crop_side`` square around every truth cell into ``out_dir/<label>/<field>-<k>.png``.

    Crops are cut by :func:`shared.cells.finder.cut_crop` (reflect-padded at the borders) around the
    centre of the cell's box, as the agent cuts them around a found cell. A field that cannot be
    read is logged and skipped; returns the crops written per label.

    Raises:
        ValueError: ``crop_side`` < 32.
        FieldTruthError: no crop could be written although the fields hold cells.
    """
    if crop_side < 32:
        raise ValueError(f"crop_side {crop_side} is too small; use at least 32 px")
    out = Path(out_dir)
    counts: dict[str, int] = {}
    skipped = 0
    for truth in fields:
        try:
            image = decode_field(truth)
            for k, cell in enumerate(truth.cells):
                crop = cut_crop(image, box_centre(cell.box), crop_side)
                folder = out / cell.label
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{truth.image.stem}-{k:03d}.png"
                if not cv2.imwrite(str(path), crop):
                    raise OSError(f"{path}: OpenCV could not write the crop")
                counts[cell.label] = counts.get(cell.label, 0) + 1
        except (OSError, ValueError) as exc:
            skipped += 1
            log.warning(kv("crop_field_skipped", image=truth.image, error=exc))
    if skipped:
        log.warning(kv("crops_skipped_fields", skipped=skipped, fields=len(fields)))
    if not counts and any(t.cells for t in fields):
        raise FieldTruthError(f"no crop written to {out}: every field failed ({skipped}); see the log")
    return counts
