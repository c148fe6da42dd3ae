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

The pieces (:func:`draw_stain`, :func:`white_cell`, :func:`red_cell`, :func:`add_patch`,
:func:`illumination`, :func:`finish`) are public: :mod:`trainer.fields` renders whole smear fields
with them, so a cell in a field looks like a cell in a single-cell image of :data:`CELL_IMAGE_PX`.

Determinism: image ``i`` of class ``c`` depends only on ``(seed, c, i)``; the same arguments give
byte-identical files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np

from shared.logs import Progress, kv

log = logging.getLogger(__name__)

LABELS: tuple[str, ...] = ("ALL", "normal")
JPEG_QUALITY = 95
MIN_IMAGE_SIZE = 64
# The native scale: in an image of this side (ALL-IDB2's crops are 257 px) one white cell is drawn
# at the size a microscope field shows it. Fields draw every cell at this scale.
CELL_IMAGE_PX = 257

# Optical densities (-ln transmission) per RGB channel of each stained component.
OD_PLASMA = np.array([0.05, 0.08, 0.07], np.float32)
OD_RBC = np.array([0.10, 0.50, 0.42], np.float32)
OD_CYTO_NORMAL = np.array([0.30, 0.22, 0.07], np.float32)
OD_CYTO_BLAST = np.array([0.42, 0.30, 0.08], np.float32)
OD_NUC_NORMAL = np.array([1.15, 1.70, 0.72], np.float32)
OD_NUC_BLAST = np.array([0.62, 0.90, 0.38], np.float32)
# White cells hide most of the red cells beneath them (the smear is a monolayer).
WBC_OCCLUSION = 0.8
# Standard normal quantiles at (i + 0.5) / 256: a byte -> Gaussian lookup table for fast noise.
_GAUSS_QUANTILES = np.array([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)], np.float32).reshape(
    1, 256
)


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


@dataclass(frozen=True)
class Stain:
    """One slide's staining: haematoxylin-like (nuclei, cytoplasm) and eosin-like (red cells)
    intensities, and a per-channel hue drift applied to every optical density."""

    hema: float
    eosin: float
    tint: np.ndarray  # [3] float32, RGB


def draw_stain(rng: np.random.Generator) -> Stain:
    """A random stain batch, as slides stained on different days differ."""
    hema, eosin = rng.uniform(0.8, 1.2), rng.uniform(0.75, 1.25)
    tint = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    return Stain(hema=float(hema), eosin=float(eosin), tint=tint)


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


def add_patch(dst: np.ndarray, patch: np.ndarray, x0: int, y0: int) -> None:
    """Add ``patch`` into ``dst`` with its top-left corner at ``(x0, y0)``, clipped to ``dst``."""
    h, w = dst.shape[:2]
    ph, pw = patch.shape[:2]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
    if xa >= xb or ya >= yb:
        return
    dst[ya:yb, xa:xb] += patch[ya - y0 : yb - y0, xa - x0 : xb - x0]


def red_cell_density(rng: np.random.Generator, radius: float) -> np.ndarray:
    """Stain density [P, P] (about 1 at the rim) of one red cell with central pallor, centred in its
    patch; times ``OD_RBC * eosin`` it is the cell's optical density (:func:`red_cell`).

    ``P`` is odd and just covers the cell, so a field of a thousand red cells renders each in a
    small patch (:func:`add_patch`) instead of over the whole field. The pallor is a soft-edged
    ellipse (a logistic edge as wide as a Gaussian blur of a quarter radius).
    """
    ecc = rng.uniform(0.0, 0.12)
    angle = rng.uniform(0, 180)
    half = int(np.ceil(radius * (1 + ecc))) + 2
    side = 2 * half + 1
    body = _disc_mask(side, half, half, radius * (1 + ecc), radius * (1 - ecc), angle)
    grid = np.arange(side, dtype=np.float32) - np.float32(half)
    cos, sin = np.float32(np.cos(np.radians(angle))), np.float32(np.sin(np.radians(angle)))
    u = grid[None, :] * cos + grid[:, None] * sin
    v = grid[:, None] * cos - grid[None, :] * sin
    rp = np.float32(radius * 0.45)
    d = np.sqrt(u * u + (v / np.float32(1 - ecc)) ** 2)
    pallor = 1.0 / (1.0 + np.exp((d - rp) * np.float32(1.7 / max(radius * 0.25, 0.5))))
    return body * (1.0 - 0.55 * pallor) * np.float32(rng.uniform(0.85, 1.15))


def red_cell(rng: np.random.Generator, radius: float, eosin: float) -> np.ndarray:
    """Optical density [P, P, 3] of one red cell (see :func:`red_cell_density`)."""
    return red_cell_density(rng, radius)[..., None] * (OD_RBC * np.float32(eosin))


def red_cell_radius(rng: np.random.Generator, cell_px: float = CELL_IMAGE_PX) -> float:
    """A red cell's radius in pixels at the native scale of a ``cell_px`` single-cell image."""
    return float(cell_px * rng.uniform(0.08, 0.105))


def _red_cells(rng: np.random.Generator, size: int, eosin: float) -> np.ndarray:
    """Optical density [S, S, 3] of a field of red cells with central pallor (some overlap)."""
    od = np.zeros((size, size, 3), np.float32)
    count = int(rng.integers(7, 16))
    for _ in range(count):
        r = red_cell_radius(rng, size)
        cx, cy = rng.uniform(-0.1, 1.1, size=2) * size
        patch = red_cell(rng, r, eosin)
        half = patch.shape[0] // 2
        add_patch(od, patch, int(round(cx)) - half, int(round(cy)) - half)
    return od


def white_cell(
    rng: np.random.Generator, size: int, blast: bool, stain: float
) -> tuple[np.ndarray, np.ndarray]:
    """Optical density [S, S, 3] of one lymphocyte or lymphoblast near the centre of an ``size``
    square, and its cell mask [S, S] (float, 1 inside the cell). The cell's size is a share of
    ``size``: at :data:`CELL_IMAGE_PX` it is at the native scale."""
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

    cyto_od = (OD_CYTO_BLAST if blast else OD_CYTO_NORMAL) * np.float32(stain)
    od = (cell_mask * (1.0 - nuc_mask))[..., None] * cyto_od
    if blast:
        texture = 1.0 + 0.12 * _noise_field(rng, size, size / 40)  # fine, even chromatin
        density = nuc_mask * texture
        for _ in range(int(rng.integers(1, 4))):  # nucleoli: pale round spots
            rr = nuc_r * rng.uniform(0.10, 0.17)
            a, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.5) * nuc_r
            spot = _disc_mask(size, ncx + dist * np.cos(a), ncy + dist * np.sin(a), rr, rr, 0)
            spot = cv2.GaussianBlur(spot, (0, 0), max(rr * 0.3, 0.5))
            density = density * (1.0 - 0.55 * spot)
        nuc_od = OD_NUC_BLAST * np.float32(stain)
    else:
        clumps = np.clip(_noise_field(rng, size, size / 14), -2.0, 2.0)
        density = nuc_mask * (1.0 + 0.3 * clumps)  # coarse, clumped chromatin
        nuc_od = OD_NUC_NORMAL * np.float32(stain)
    od += np.clip(density, 0.0, None)[..., None] * nuc_od
    return od.astype(np.float32), cell_mask


def illumination(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Uneven illumination [H, W] (float32, about 1): a soft gradient, vignetting, lamp level."""
    xx = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :]
    yy = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None]
    gx, gy = rng.uniform(-0.08, 0.08, size=2)
    vignette = rng.uniform(0.0, 0.25)
    level = rng.uniform(0.93, 1.0)
    illum = 1.0 + np.float32(gx) * xx + np.float32(gy) * yy - np.float32(vignette) * (xx**2 + yy**2)
    return (illum * np.float32(level)).astype(np.float32)


def finish(
    rng: np.random.Generator, rgb: np.ndarray, cell_px: float = CELL_IMAGE_PX, fast_noise: bool = False
) -> np.ndarray:
    """Optics and sensor on a float RGB image in [0, 1]: defocus blur and noise, scaled to the
    native scale of a ``cell_px`` single-cell image; returns uint8 BGR.

    ``fast_noise`` draws the sensor noise as float32 (a different random stream, several times
    faster on a 5-megapixel field); single-cell images keep the float64 stream they always had.
    """
    rgb = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), rng.uniform(0.4, 1.2) * cell_px / 128)
    sigma = rng.uniform(0.005, 0.02)
    if fast_noise:
        # 256 Gaussian quantiles picked by uniform bytes: the noise ends on an 8-bit sensor anyway.
        noise = cv2.LUT(rng.integers(0, 256, rgb.shape, dtype=np.uint8), _GAUSS_QUANTILES)
    else:
        noise = (rng.normal(0.0, sigma, size=rgb.shape) / sigma).astype(np.float32)
    # One pass: scale to 8 bits, add the noise, round and saturate.
    rgb8 = cv2.addWeighted(rgb, 255.0, noise, 255.0 * sigma, 0.0, dtype=cv2.CV_8U)
    return cv2.cvtColor(rgb8, cv2.COLOR_RGB2BGR)


def render_smear(rng: np.random.Generator, label: str, size: int) -> np.ndarray:
    """Render one ``size`` x ``size`` smear image of class ``label``; returns uint8 BGR.

    Raises:
        ValueError: ``label`` is not one of :data:`LABELS`, or ``size`` < :data:`MIN_IMAGE_SIZE`.
    """
    if label not in LABELS:
        raise ValueError(f"unknown synthetic label {label!r}; use one of {', '.join(LABELS)}")
    if size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {size} is too small; use at least {MIN_IMAGE_SIZE} px")
    stain = draw_stain(rng)
    wbc_od, wbc_mask = white_cell(rng, size, label == "ALL", stain.hema)
    rbc_od = _red_cells(rng, size, stain.eosin) * (1.0 - WBC_OCCLUSION * wbc_mask)[..., None]
    od = (OD_PLASMA + rbc_od + wbc_od) * stain.tint
    rgb = np.exp(-od) * illumination(rng, size, size)[..., None]
    # Rotation about the centre (the field around the cell turns too).
    matrix = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(0, 360), 1.0)
    rgb = cv2.warpAffine(
        rgb.astype(np.float32),
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return finish(rng, rgb, cell_px=size)


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
