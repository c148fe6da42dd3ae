"""Synthetic blood-smear images: a seeded, fast stand-in for ALL-IDB2 (numpy + OpenCV only).

Each image is a single white blood cell near the centre of a field of pink red blood cells, like
the 257 px ALL-IDB2 crops. The two classes differ the way a haematologist tells them apart:

* ``ALL`` (lymphoblast): large cell; nucleus filling most of it (high nucleus/cytoplasm ratio),
  irregular and often cleaved outline, pale *fine* chromatin, one to three visible nucleoli;
  a slightly more basophilic (bluer) cytoplasm.
* ``normal`` (mature lymphocyte): small cell, round dense dark nucleus with *coarse* clumped
  chromatin, a thin rim of pale blue cytoplasm.

Sizes overlap a little (small L1-type blasts exist), so shape and texture matter too. Every image
varies in stain intensity and tint, illumination, blur, noise, cell position and rotation, and in
the number and overlap of red cells. Rendering is in optical density (Beer-Lambert) space, so
overlapping cells darken as they do under a microscope.

Determinism: image ``i`` of class ``c`` depends only on ``(seed, c, i)``; the same arguments give
byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from shared.logs import Progress, kv

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("ALL", "normal")
JPEG_QUALITY = 95
MIN_IMAGE_SIZE = 64

# Optical densities (-ln transmission) per RGB channel of each stained component.
_OD_PLASMA = np.array([0.05, 0.08, 0.07])
_OD_RBC = np.array([0.10, 0.50, 0.42])
_OD_CYTO_NORMAL = np.array([0.30, 0.22, 0.07])
_OD_CYTO_BLAST = np.array([0.42, 0.30, 0.08])
_OD_NUC_NORMAL = np.array([1.15, 1.70, 0.72])
_OD_NUC_BLAST = np.array([0.62, 0.90, 0.38])


@dataclass(frozen=True)
class GeneratedDataset:
    """What :func:`generate_dataset` wrote."""

    out_dir: Path
    labels: tuple[str, ...]
    image_size: int
    seed: int
    files: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {label: len(paths) for label, paths in self.files.items()}


def _noise_field(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Smooth zero-mean, unit-std noise whose blobs are about ``cell`` pixels wide."""
    low = max(2, int(round(size / max(cell, 1.0))))
    base = rng.standard_normal((low, low)).astype(np.float32)
    up = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC)
    std = float(up.std())
    return up / std if std > 0 else up


def _polygon_mask(size: int, cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Anti-aliased float mask [size, size] of the polygon ``r(theta)`` around ``(cx, cy)``."""
    shift = 4
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    pts_fixed = np.round(pts * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [pts_fixed], (255,), lineType=cv2.LINE_AA, shift=shift)
    return mask.astype(np.float32) / 255.0


def _disc_mask(size: int, cx: float, cy: float, ax: float, ay: float, angle_deg: float) -> np.ndarray:
    shift = 4
    mask = np.zeros((size, size), np.uint8)
    scale = 1 << shift
    cv2.ellipse(
        mask,
        (round(cx * scale), round(cy * scale)),
        (round(ax * scale), round(ay * scale)),
        angle_deg,
        0,
        360,
        (255,),
        -1,
        lineType=cv2.LINE_AA,
        shift=shift,
    )
    return mask.astype(np.float32) / 255.0


def _red_cells(rng: np.random.Generator, size: int, eosin: float) -> np.ndarray:
    """Optical density [S, S, 3] of a field of red cells with central pallor (some overlap)."""
    od = np.zeros((size, size, 3), np.float32)
    count = int(rng.integers(7, 16))
    for _ in range(count):
        r = size * rng.uniform(0.08, 0.105)
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * size
        ecc = rng.uniform(0.0, 0.12)
        angle = rng.uniform(0, 180)
        body = _disc_mask(size, cx, cy, r * (1 + ecc), r * (1 - ecc), angle)
        pallor = _disc_mask(size, cx, cy, r * 0.45, r * 0.45 * (1 - ecc), angle)
        pallor = cv2.GaussianBlur(pallor, (0, 0), max(r * 0.25, 0.5))
        density = body * (1.0 - 0.55 * pallor) * rng.uniform(0.85, 1.15)
        od += density[..., None] * (_OD_RBC * eosin).astype(np.float32)
    return od


def _white_cell(
    rng: np.random.Generator, size: int, blast: bool, stain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Optical density [S, S, 3] of one lymphocyte or lymphoblast and its cell mask [S, S]."""
    n = 256
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    # Cell (cytoplasm) outline: near round.
    cell_r = size * (rng.uniform(0.13, 0.21) if blast else rng.uniform(0.09, 0.14))
    cell_shape = 1.0 + sum(
        rng.uniform(0.0, 0.03) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3)
    )
    cell_mask = _polygon_mask(size, cx, cy, cell_r * cell_shape, theta)
    # Nucleus: a blast's fills most of the cell, irregular and often cleaved; a lymphocyte's
    # is round and dense with a thin, often eccentric rim of cytoplasm.
    if blast:
        nuc_r = cell_r * rng.uniform(0.76, 0.88)
        wobble = 1.0 + sum(
            rng.uniform(0.03, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4, 5)
        )
        if rng.random() < 0.75:
            phi = rng.uniform(0, 2 * np.pi)
            d = np.angle(np.exp(1j * (theta - phi)))
            wobble = wobble * (1.0 - rng.uniform(0.25, 0.45) * np.exp(-((d / rng.uniform(0.12, 0.28)) ** 2)))
    else:
        nuc_r = cell_r * rng.uniform(0.80, 0.9)
        wobble = 1.0 + sum(
            rng.uniform(0.0, 0.025) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3)
        )
    room = max(cell_r - nuc_r, 0.0) * 0.8
    off = rng.uniform(0.0, room) * np.exp(1j * rng.uniform(0, 2 * np.pi))
    ncx, ncy = cx + off.real, cy + off.imag
    nuc_mask = _polygon_mask(size, ncx, ncy, nuc_r * wobble, theta) * cell_mask

    cyto_od = (_OD_CYTO_BLAST if blast else _OD_CYTO_NORMAL) * stain
    od = (cell_mask * (1.0 - nuc_mask))[..., None] * cyto_od.astype(np.float32)
    if blast:
        texture = 1.0 + 0.12 * _noise_field(rng, size, size / 40)  # fine, even chromatin
        density = nuc_mask * texture
        for _ in range(int(rng.integers(1, 4))):  # nucleoli: pale round spots
            rr = nuc_r * rng.uniform(0.10, 0.17)
            a, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5) * nuc_r
            spot = _disc_mask(size, ncx + dist * np.cos(a), ncy + dist * np.sin(a), rr, rr, 0)
            spot = cv2.GaussianBlur(spot, (0, 0), max(rr * 0.3, 0.5))
            density = density * (1.0 - 0.55 * spot)
        nuc_od = _OD_NUC_BLAST * stain
    else:
        clumps = np.clip(_noise_field(rng, size, size / 14), -2.0, 2.0)
        density = nuc_mask * (1.0 + 0.3 * clumps)  # coarse, clumped chromatin
        nuc_od = _OD_NUC_NORMAL * stain
    od += np.clip(density, 0.0, None)[..., None] * nuc_od.astype(np.float32)
    return od, cell_mask


def render_smear(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """Render one ``size`` x ``size`` smear image of class ``label``; returns uint8 BGR.

    Raises:
        ValueError: ``label`` is not one of :data:`LABELS`, or ``size`` < :data:`MIN_IMAGE_SIZE`.
    """
    if label not in LABELS:
        raise ValueError(f"unknown synthetic label {label!r}; use one of {', '.join(LABELS)}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} is too small; use at least {MIN_IMAGE_SIZE} px")
    blast = label == "ALL"
    hema, eosin = rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.25)  # stain batch intensity
    tint = rng.uniform(0.9, 1.1, size=3).astype(np.float32)  # stain hue drift

    wbc_od, wbc_mask = _white_cell(rng, size, blast, hema)
    rbc_od = _red_cells(rng, size, eosin) * (1.0 - 0.8 * wbc_mask)[..., None]
    od = (_OD_PLASMA.astype(np.float32) + rbc_od + wbc_od) * tint

    # Uneven illumination: a soft gradient plus vignetting.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gx, gy = rng.uniform(-0.08, 0.08, size=2)
    illum = 1.0 + gx * xx + gy * yy - rng.uniform(0.0, 0.25) * (xx**2 + yy**2)
    rgb = np.exp(-od) * illum[..., None] * rng.uniform(0.93, 1.0)

    # Optics and sensor: rotation about the centre, defocus blur, noise.
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(0, 360), 1.0)
    rgb = cv2.warpAffine(
        rgb.astype(np.float32),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    rgb = cv2.GaussianBlur(rgb, (0, 0), rng.uniform(0.4, 1.2) * size / 128)
    rgb = rgb + rng.normal(0.0, rng.uniform(0.005, 0.02), size=rgb.shape).astype(np.float32)
    rgb8 = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(rgb8[..., ::-1])


def generate_dataset(
    out_dir: str | Path, per_class: int, image_size: int = 256, seed: int = 0
) -> GeneratedDataset:
    """Write ``per_class`` images of each class to ``out_dir/ALL/*.jpg`` and ``out_dir/normal/*.jpg``.

    Images are JPEG quality 95, ``image_size`` pixels square, named ``<label>-<index>.jpg``.

    Raises:
        ValueError: ``per_class`` < 1, ``image_size`` too small, or a class folder already holds
            files (pick an empty ``out_dir`` so data sets never mix).
        OSError: a file cannot be written.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is too small; use at least {MIN_IMAGE_SIZE} px")
    out = Path(out_dir)
    for label in LABELS:
        folder = out / label
        if folder.is_dir() and any(folder.iterdir()):
            raise ValueError(
                f"{folder} already holds files; generate into an empty folder so two data sets never mix"
            )
    files: dict[str, list[Path]] = {label: [] for label in LABELS}
    with Progress(per_class * len(LABELS), "generate", log, unit="img") as progress:
        for class_index, label in enumerate(LABELS):
            folder = out / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rng = np.random.default_rng([seed, class_index, i])
                image = render_smear(rng, label, image_size)
                path = folder / f"{label}-{i:05d}.jpg"
                if not cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                    raise OSError(f"{path}: OpenCV could not write the image")
                files[label].append(path)
                progress.update()
    log.info(kv("generated", out=out, per_class=per_class, image_size=image_size, seed=seed))
    return GeneratedDataset(out_dir=out, labels=LABELS, image_size=image_size, seed=seed, files=files)
