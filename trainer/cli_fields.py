"""``leukonet trainer fields ...``: generate smear fields with ground truth, evaluate the cell finder.

Registered on the ``trainer`` group by :mod:`trainer.cli`. Like every trainer command, each prints
one JSON object as the last line of stdout. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from shared.cells.spec import FinderSpec
from trainer.cli_common import emit, fail_cleanly

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


def _parse_size(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, int]:
    match = _SIZE.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not WIDTHxHEIGHT, e.g. 2592x1944")
    return int(match.group(1)), int(match.group(2))


def load_finder_spec(path: Path | None) -> FinderSpec:
    """The finder settings of ``path``: a JSON object of :class:`FinderSpec` fields, or a bundle's
    ``manifest.json`` (its ``cells.finder`` section); the defaults when ``path`` is ``None``.

    Raises:
        ValueError: unreadable JSON or settings FinderSpec refuses (the message names the file).
    """
    if path is None:
        return FinderSpec()
    if path.stat().st_size > 1 << 20:
        raise ValueError(f"{path}: over 1 MiB; a finder spec is a small JSON object")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not JSON ({exc}); pass a FinderSpec JSON object or a manifest.json"
        ) from None
    if isinstance(data, dict) and isinstance(data.get("cells"), dict):
        data = data["cells"].get("finder", {})
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object of finder settings")
    try:
        return FinderSpec.model_validate(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


SPEC_OPTION = click.option(
    "--spec",
    "spec_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Finder settings: a JSON object of FinderSpec fields or a bundle's manifest.json "
    "(default: FinderSpec defaults).",
)


@click.group("fields")
def fields_cmd() -> None:
    """Synthetic smear fields with ground truth, and the white-cell finder's evaluation."""


@fields_cmd.command("generate")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Empty folder for field-NNNNN.jpg + field-NNNNN.json (ground truth).",
)
@click.option("--count", required=True, type=click.IntRange(min=1, max=100_000), help="Fields to generate.")
@click.option("--seed", default=0, show_default=True, type=int, help="Field i depends only on (seed, i).")
@click.option(
    "--size",
    default="2592x1944",
    show_default=True,
    callback=_parse_size,
    help="Field size WIDTHxHEIGHT in pixels (ALL-IDB1's camera: 2592x1944).",
)
@click.option(
    "--leukemic-fraction",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Share of fields that are ALL (2-6 blasts among the lymphocytes).",
)
@click.option(
    "--crops",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also cut a square around every truth cell into CROPS/<label>/*.png (a training set).",
)
@click.option(
    "--crop-side", default=257, show_default=True, type=click.IntRange(32, 2048), help="Crop side, pixels."
)
@fail_cleanly
def generate_fields_cmd(
    out: Path,
    count: int,
    seed: int,
    size: tuple[int, int],
    leukemic_fraction: float,
    crops: Path | None,
    crop_side: int,
) -> None:
    """Generate smear fields (red cells, lymphocytes, blasts) with white-cell boxes as truth."""
    from trainer.fields import cut_crops, write_fields

    width, height = size
    fields = write_fields(out, count, seed, width=width, height=height, leukemic_fraction=leukemic_fraction)
    labels = [f.label for f in fields]
    result: dict[str, object] = {
        "out": str(out),
        "fields": len(fields),
        "labels": {lab: labels.count(lab) for lab in sorted(set(labels))},
        "white_cells": sum(len(f.cells) for f in fields),
        "size": f"{width}x{height}",
        "seed": seed,
    }
    if crops is not None:
        result["crops"] = str(crops)
        result["crop_counts"] = cut_crops(fields, crops, crop_side)
        result["crop_side"] = crop_side
    emit(result)


@fields_cmd.command("evaluate-finder")
@click.argument("folder", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--xyc",
    is_flag=True,
    default=False,
    help="FOLDER is ALL-IDB1-like: ImXXX_1.jpg + ImXXX_1.xyc blast centroids (else field JSON sidecars).",
)
@click.option(
    "--iou",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="IoU at which a found box matches a truth box (sidecars only).",
)
@SPEC_OPTION
@fail_cleanly
def evaluate_finder_cmd(folder: Path, xyc: bool, iou: float, spec_path: Path | None) -> None:
    """Score the white-cell finder on FOLDER: recall, precision, per-label recall, ms per field."""
    spec = load_finder_spec(spec_path)
    if xyc:
        from trainer.allidb1 import evaluate_finder_on_centroids, find_xyc_pairs

        emit(evaluate_finder_on_centroids(find_xyc_pairs(folder), spec).to_json())
        return
    from trainer.fields import load_fields
    from trainer.finder_eval import evaluate_finder

    emit(evaluate_finder(load_fields(folder), spec, iou=iou).to_json())
