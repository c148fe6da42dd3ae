"""The finder on real fields: ALL-IDB1's blast centroids (``ImXXX_1.xyc``).

ALL-IDB1 (Labati, Piuri, Scotti 2011) ships 108 smear fields ``ImXXX_Y.jpg`` (``Y`` = 1: the
patient has ALL) and, for each leukemic field, ``ImXXX_1.xyc``: one blast centroid per line,
``x y`` in pixels. It has no boxes and no other white cells, so the finder is scored by **blast
recall**: the share of centroids that fall inside a found box, with a Wilson 95 % interval. A
stricter one-to-one figure counts a box for one centroid at most (a box swallowing two touching
blasts finds one), and found cells per image shows how much else the finder picks up.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.cells.finder import find_cells
from shared.cells.spec import FinderSpec
from shared.logs import Progress, kv
from shared.preprocessing import decode_image
from trainer.stats import wilson_interval

log = logging.getLogger(__name__)

MAX_XYC_BYTES = 64 * 1024
MAX_XYC_LINES = 2048
XYC_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".png", ".tif")
_LINE = re.compile(r"^\s*(-?\d+)\s+(-?\d+)\s*$")


class XycError(ValueError):
    """A ``.xyc`` centroid file is too large or malformed; the message names the file and line."""


def read_xyc(path: str | Path) -> list[tuple[int, int]]:
    """The ``(x, y)`` centroids of one ``.xyc`` file: one ``x y`` pair of integers per line.

    Blank lines, CRLF and surrounding whitespace are tolerated.

    Raises:
        XycError: larger than :data:`MAX_XYC_BYTES`, more than :data:`MAX_XYC_LINES` lines, not
            text, a line that is not two integers, or a negative coordinate.
        OSError: the file cannot be read.
    """
    p = Path(path)
    size = p.stat().st_size
    if size > MAX_XYC_BYTES:
        raise XycError(f"{p}: {size} bytes is over the {MAX_XYC_BYTES} byte limit of a centroid file")
    try:
        text = p.read_bytes().decode("ascii")
    except UnicodeDecodeError:
        raise XycError(f"{p}: not a text file; expected lines of 'x y' integers") from None
    lines = text.splitlines()
    if len(lines) > MAX_XYC_LINES:
        raise XycError(f"{p}: {len(lines)} lines, over the limit of {MAX_XYC_LINES}")
    points: list[tuple[int, int]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise XycError(f"{p}:{number}: expected two integers 'x y', got {line.strip()[:60]!r}")
        x, y = int(match.group(1)), int(match.group(2))
        if x < 0 or y < 0:
            raise XycError(f"{p}:{number}: negative coordinate ({x}, {y}); centroids are pixels")
        points.append((x, y))
    return points


def find_xyc_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """``(image, xyc)`` pairs of ``folder``: every ``*.xyc`` with an image of the same name.

    Raises:
        XycError: the folder has no ``.xyc`` file, or one has no image beside it.
    """
    root = Path(folder)
    xycs = sorted(root.glob("*.xyc"))
    if not xycs:
        raise XycError(f"{root} holds no .xyc files; point at ALL-IDB1's folder of ImXXX_1.jpg + .xyc")
    pairs = []
    for xyc in xycs:
        images = [xyc.with_suffix(s) for s in XYC_IMAGE_SUFFIXES if xyc.with_suffix(s).is_file()]
        if not images:
            raise XycError(f"{xyc}: no image {xyc.stem}.jpg beside it; keep each .xyc next to its image")
        pairs.append((images[0], xyc))
    return pairs


@dataclass
class CentroidMetrics:
    """What :func:`evaluate_finder_on_centroids` measured; :meth:`to_json` is the flat report."""

    images: int = 0
    skipped: int = 0
    blasts: int = 0
    blasts_in_box: int = 0
    blasts_matched: int = 0  # one centroid per box at most
    found: list[int] = field(default_factory=list)  # cells found per image
    ms: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        def ratio(k: int) -> float | None:
            return round(k / self.blasts, 4) if self.blasts else None

        def ci(k: int) -> list[float] | None:
            interval = wilson_interval(k, self.blasts)
            return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]

        return {
            "images": self.images,
            "skipped": self.skipped,
            "blasts": self.blasts,
            "blasts_in_box": self.blasts_in_box,
            "blast_recall": ratio(self.blasts_in_box),
            "blast_recall_ci": ci(self.blasts_in_box),
            "blasts_matched": self.blasts_matched,
            "blast_recall_one_to_one": ratio(self.blasts_matched),
            "blast_recall_one_to_one_ci": ci(self.blasts_matched),
            "found_cells": int(sum(self.found)),
            "found_per_image": round(float(np.mean(self.found)), 2) if self.found else None,
            "ms_per_field": round(float(np.mean(self.ms)), 2) if self.ms else None,
        }


def _inside(boxes: np.ndarray, points: np.ndarray) -> np.ndarray:
    """bool [points, boxes]: point inside box (x, y, w, h; right and bottom edges excluded)."""
    px, py = points[:, 0:1], points[:, 1:2]
    x, y, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return (px >= x) & (px < x + w) & (py >= y) & (py < y + h)


def _one_to_one(boxes: np.ndarray, points: np.ndarray) -> int:
    """Centroids matched to distinct boxes that hold them, nearest box centre first."""
    if boxes.size == 0 or points.size == 0:
        return 0
    inside = _inside(boxes, points)
    centres = boxes[:, :2] + boxes[:, 2:] / 2.0
    dist = np.hypot(points[:, 0:1] - centres[None, :, 0], points[:, 1:2] - centres[None, :, 1])
    dist = np.where(inside, dist, np.inf)
    used_p: set[int] = set()
    used_b: set[int] = set()
    for flat in np.argsort(dist, axis=None, kind="stable"):
        i, j = divmod(int(flat), dist.shape[1])
        if not np.isfinite(dist[i, j]):
            break
        if i not in used_p and j not in used_b:
            used_p.add(i)
            used_b.add(j)
    return len(used_p)


def evaluate_finder_on_centroids(pairs: Sequence[tuple[Path, Path]], spec: FinderSpec) -> CentroidMetrics:
    """Run the finder on each ``(image, xyc)`` pair and count the blast centroids it covers.

    An image or ``.xyc`` that cannot be read, or a centroid outside its image, is logged and the
    pair counted in ``skipped``.
    """
    metrics = CentroidMetrics()
    with Progress(len(pairs), "finder-xyc", log, unit="image") as progress:
        for image_path, xyc_path in pairs:
            try:
                points = read_xyc(xyc_path)
                image = decode_image(image_path.read_bytes(), str(image_path))
                h, w = image.shape[:2]
                outside = [(x, y) for x, y in points if x >= w or y >= h]
                if outside:
                    raise XycError(f"{xyc_path}: centroid {outside[0]} lies outside the {w}x{h} image")
            except (OSError, ValueError) as exc:
                metrics.skipped += 1
                log.warning(kv("xyc_pair_skipped", image=image_path, error=exc))
                progress.update()
                continue
            start = time.perf_counter()
            found = find_cells(image, spec)
            metrics.ms.append((time.perf_counter() - start) * 1000.0)
            boxes = np.asarray([c.box for c in found], np.float64).reshape(-1, 4)
            pts = np.asarray(points, np.float64).reshape(-1, 2)
            metrics.images += 1
            metrics.blasts += len(points)
            metrics.found.append(len(found))
            if boxes.size and pts.size:
                metrics.blasts_in_box += int(_inside(boxes, pts).any(axis=1).sum())
                metrics.blasts_matched += _one_to_one(boxes, pts)
            progress.update()
    flat = {k: v for k, v in metrics.to_json().items() if not isinstance(v, list)}
    log.info(kv("finder_evaluated_on_centroids", **flat))
    return metrics
