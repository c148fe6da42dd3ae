"""The classical white-cell finder: where the white cells of a smear field are (OpenCV + numpy).

Steps (every setting in :class:`~shared.cells.spec.FinderSpec`), on the field scaled down to
``work_max_side_px``:

1. **Nuclear-stain channel.** Optical density ``OD = ln(background / I)`` of the red and green
   channels, against the local plasma brightness (so uneven illumination cancels). A
   Romanowsky-stained nucleus (purple) absorbs green *and* red; a red cell (pink) absorbs green but
   passes most red; the pale blue cytoplasm absorbs some red but little green. So the channel is
   ``min(OD_red - rho * OD_green, 0.5 * OD_green)``: the red absorbance the red-cell stain does not
   explain (``rho`` is the red cells' own OD red/green ratio, the median over the field's stained
   pixels, so it follows each slide's eosin shade and the camera's tint), capped by the green
   absorbance (which the cytoplasm lacks). This is colour deconvolution with the eosin vector
   measured per field instead of a fixed stain matrix; stacked red cells, however dark, score about
   zero, and a pale blast nucleus still scores several times its cytoplasm.
2. **Threshold**: a slight blur (chromatin texture, pale nucleoli), then Otsu per field, never
   below ``min_nucleus_absorbance`` (a field without white cells must not turn noise into nuclei);
   or the fixed ``nucleus_threshold``. Both are absorbances ``1 - exp(-OD)``.
3. **Morphology**: an opening removes specks; holes are filled when small or stained (pale
   nucleoli, pale chromatin), not when large and unstained (plasma enclosed by a ring of touching
   cells, which must stay open for step 4 to find each cell of the ring).
4. **Split touching nuclei** (``split_touching``): peaks of the distance transform are nucleus
   centres unless the ridge between two peaks stays above ``split_ratio`` of the lower one (a
   cleaved or lobed nucleus); each pixel then goes to the centre of least power distance
   ``|p - c|^2 - r^2`` (``r`` the peak's inscribed radius), which for two overlapping discs is the
   line through their intersections, the cut a watershed of the distance map would make.
5. **Filters**: nucleus area within ``[min_nucleus_area_px, max_nucleus_area_px]`` (native pixels)
   and solidity (area / convex hull area) >= ``min_solidity``.
6. **Cell box**: the nucleus box grown ``cell_scale`` times about its centre (the cytoplasm around
   it), mapped back to native pixels and clipped to the image. On generated fields this matches
   the whole-cell truth boxes with a mean IoU of about 0.87.

Hostile input is bounded: components far larger than a clump of nuclei are dropped before any
distance transform, at most :data:`_MAX_COMPONENTS` components and :data:`_MAX_SEEDS` seeds per
clump are examined.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shared.cells.spec import FinderSpec

_BG_CELLS = 24  # background estimated on a grid of this many cells along the longer side
_DEFAULT_RBC_RATIO = 0.25  # OD red / OD green of eosin-stained red cells, when a field has too few
_MAX_RBC_RATIO = 0.6  # a field "ratio" above this is not red cells: cap it so nuclei stay visible
_MAX_SEEDS = 32  # nuclei one clump may split into
_MAX_CLUMP = 4  # a component larger than this many largest nuclei is not a (clump of) cell(s)
_MAX_COMPONENTS = 4096  # components examined per field (a noise image makes thousands)
_MAX_HOLE = 0.5  # holes up to this share of the smallest nucleus are filled
_STAINED_HOLE = 0.75  # holes whose mean level reaches this share of the threshold are filled
_GREEN_SHARE = 0.5  # a nucleus absorbs green at least about as much as red: min(excess red, half green)


@dataclass(frozen=True)
class FoundCell:
    box: tuple[int, int, int, int]  # x, y, w, h of the whole cell, native pixels, inside the image
    nucleus_area_px: int  # native pixels
    centre: tuple[float, float]  # centre of ``box``: where the crop is cut


def _check_image(image_bgr: np.ndarray) -> None:
    if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        shape = getattr(image_bgr, "shape", None)
        raise ValueError(f"find_cells needs a BGR image [H, W, 3]; got shape {shape} (decode it as colour)")
    if image_bgr.size == 0:
        raise ValueError(f"find_cells got an empty image of shape {image_bgr.shape}")
    if image_bgr.dtype != np.uint8:
        raise ValueError(f"find_cells needs uint8 pixels; got {image_bgr.dtype} (convert to 8-bit)")


# ln(I) of every 8-bit level (0 counts as 1: a saturated dark pixel, not infinite density).
_LOG_LEVELS = np.log(np.maximum(np.arange(256, dtype=np.float32), 1.0)).reshape(1, 256)
LEVELS_PER_OD = 127.5  # nucleus levels: optical density 0..2 as uint8 0..255


def _optical_density(channel: np.ndarray, cell_px: float) -> np.ndarray:
    """Optical density ``ln(background / I)`` of one uint8 channel (float32, negative where a pixel
    is brighter than the local background). The background is the local plasma brightness: the
    brightest thing on a smear, found by a max filter over three cells of a coarse grid, so uneven
    illumination cancels. The filter spans at least ``cell_px`` (the largest cell), so it never
    takes the inside of a big cell for plasma."""
    h, w = channel.shape
    step = max(1, max(h, w) // _BG_CELLS, int(np.ceil(cell_px / 2)))
    gh, gw = max(1, h // step), max(1, w // step)
    small = cv2.resize(channel, (gw, gh), interpolation=cv2.INTER_AREA)
    small = cv2.dilate(small, np.ones((3, 3), np.uint8))
    log_bg = cv2.GaussianBlur(cv2.LUT(small, _LOG_LEVELS), (0, 0), 1.0)
    log_bg = cv2.resize(log_bg, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.subtract(log_bg, cv2.LUT(channel, _LOG_LEVELS))


def _red_cell_ratio(od_red: np.ndarray, od_green: np.ndarray) -> float:
    """The field's red-cell stain as OD red / OD green: the median over stained pixels (red cells
    cover a third of a field, nuclei about one per cent, so the median is the red cells')."""
    step = max(1, int(np.sqrt(od_red.size / 65_536)))
    r, g = od_red[::step, ::step].ravel(), od_green[::step, ::step].ravel()
    stained = g > 0.1
    if int(stained.sum()) < 64:
        return _DEFAULT_RBC_RATIO
    ratio = float(np.median(r[stained] / g[stained]))
    return min(max(ratio, 0.0), _MAX_RBC_RATIO)


def nucleus_levels(image_bgr: np.ndarray, cell_px: float = 0.0) -> np.ndarray:
    """Nuclear stain density of every pixel as uint8 [H, W]: optical density x :data:`LEVELS_PER_OD`
    (saturating at OD 2); see step 1 of the module docstring. ``cell_px``: the largest cell's
    diameter in pixels of ``image_bgr`` (the background is sought between cells at least that far)."""
    _, green, red = cv2.split(image_bgr)
    od_red, od_green = _optical_density(red, cell_px), _optical_density(green, cell_px)
    ratio = _red_cell_ratio(od_red, od_green)
    excess_red = cv2.scaleAdd(od_green, -ratio, od_red)
    # numpy, not cv2, for the scalar operations: cv2 reads a Python scalar beside an array of four
    # or fewer elements as an array.
    score = np.minimum(excess_red, od_green * np.float32(_GREEN_SHARE))
    np.maximum(score, 0.0, out=score)
    return cv2.convertScaleAbs(score, alpha=LEVELS_PER_OD)


def absorbance_level(absorbance: float) -> int:
    """The nucleus level of an absorbance (share of light absorbed, 0..1)."""
    od = -np.log(max(1.0 - absorbance, 1e-6))
    return int(min(255, np.ceil(od * LEVELS_PER_OD)))


def _threshold(levels: np.ndarray, spec: FinderSpec) -> int:
    if spec.nucleus_threshold is not None:
        return absorbance_level(spec.nucleus_threshold)
    otsu, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return max(int(otsu) + 1, absorbance_level(spec.min_nucleus_absorbance))


def _fill_holes(mask: np.ndarray, levels: np.ndarray, threshold: int, max_area: float) -> np.ndarray:
    """``mask`` with its holes filled when they are small (below ``max_area``) or stained (mean
    level at least :data:`_STAINED_HOLE` of ``threshold``): pale nucleoli, pale chromatin. A large
    pale hole is plasma enclosed by a ring of touching cells; filling it would merge the ring into
    one blob whose distance transform peaks in the gap instead of in each nucleus."""
    # Two-level contours: the holes are the children of the outer outlines.
    contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return mask
    filled = mask.copy()
    holes = [c for c, link in zip(contours, hierarchy[0], strict=True) if link[3] >= 0]
    for contour in holes[:_MAX_COMPONENTS]:
        x, y, w, h = cv2.boundingRect(contour)
        outline = np.zeros((h, w), np.uint8)
        cv2.drawContours(outline, [contour], -1, (255,), thickness=cv2.FILLED, offset=(-x, -y))
        inside = cv2.bitwise_and(outline, cv2.bitwise_not(mask[y : y + h, x : x + w]))  # its own pixels
        count = cv2.countNonZero(inside)
        if count == 0:
            continue
        mean = float(cv2.mean(levels[y : y + h, x : x + w], mask=inside)[0])
        if count < max_area or mean >= _STAINED_HOLE * threshold:
            roi = filled[y : y + h, x : x + w]
            cv2.bitwise_or(roi, inside, dst=roi)
    return filled


def _ridge_min(dist: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> float:
    """Lowest distance-transform value on the straight line between peaks ``a`` and ``b`` (x, y)."""
    n = max(abs(a[0] - b[0]), abs(a[1] - b[1])) + 1
    xs = np.rint(np.linspace(a[0], b[0], n)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], n)).astype(int)
    return float(dist[ys, xs].min())


def _seeds(dist: np.ndarray, min_radius: float, ratio: float) -> list[tuple[int, int, float]]:
    """Nucleus centres (x, y, inscribed radius) in a distance map, highest first (at most
    :data:`_MAX_SEEDS`). A peak joins a higher one when the ridge between them stays above
    ``ratio`` of the lower peak (one lobed or cleaved nucleus), else it seeds a nucleus of its own."""
    k = max(3, int(round(min_radius)) | 1)
    local_max = cv2.dilate(dist, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    peaks = ((dist >= local_max - 1e-3) & (dist >= min_radius * 0.5)).astype(np.uint8)
    n, labels = cv2.connectedComponents(peaks, connectivity=8)
    if n <= 2:
        return []
    ys, xs = np.nonzero(labels)
    heights = dist[ys, xs]
    order = np.lexsort((-heights, labels[ys, xs]))  # by peak label, highest pixel first
    first = order[np.r_[True, np.diff(labels[ys[order], xs[order]]) != 0]]
    first = first[np.argsort(-heights[first], kind="stable")][:_MAX_SEEDS]
    seeds: list[tuple[int, int, float]] = []
    for idx in first:
        x, y, h = int(xs[idx]), int(ys[idx]), float(heights[idx])
        if all(_ridge_min(dist, (x, y), (sx, sy)) < ratio * min(h, sh) for sx, sy, sh in seeds):
            seeds.append((x, y, h))
    return seeds


def _split(component: np.ndarray, min_radius: float, ratio: float) -> list[np.ndarray]:
    """Masks of the nuclei in one connected ``component`` (uint8 0/255, its bounding box)."""
    padded = cv2.copyMakeBorder(component, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=(0,))
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 3)[1:-1, 1:-1]
    if float(dist.max()) < min_radius:
        return [component]
    seeds = _seeds(dist, min_radius, ratio)
    if len(seeds) < 2:
        return [component]
    # Each pixel goes to the seed of least power distance |p - s|^2 - r^2 (r: the seed's inscribed
    # radius): for two overlapping discs that is the line through their intersection points.
    ys, xs = np.nonzero(component)
    sx, sy, sr = (np.array(v, np.float32) for v in zip(*seeds, strict=True))
    power = (xs[:, None] - sx[None, :]) ** 2 + (ys[:, None] - sy[None, :]) ** 2 - sr[None, :] ** 2
    owner = np.argmin(power, axis=1)
    parts = []
    for i in range(len(seeds)):
        part = np.zeros_like(component)
        part[ys[owner == i], xs[owner == i]] = 255
        parts.append(part)
    return parts


def _nucleus_mask(work: np.ndarray, spec: FinderSpec, min_radius: float, cell_px: float) -> np.ndarray:
    """Binary nucleus mask (uint8 0/255) of the work image: threshold, opening, holes filled."""
    levels = nucleus_levels(work, cell_px)
    # Chromatin is textured (clumps, pale nucleoli): smooth over a fraction of a nucleus so one
    # nucleus thresholds as one piece.
    levels = cv2.GaussianBlur(levels, (0, 0), max(0.5, min_radius * 0.3))
    threshold = _threshold(levels, spec)
    _, mask = cv2.threshold(levels, threshold - 1, 255, cv2.THRESH_BINARY)
    k = max(1, int(round(min_radius * 0.4)))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return _fill_holes(mask, levels, threshold, max_area=np.pi * min_radius**2 * _MAX_HOLE)


def _cell_box(
    nucleus_box: tuple[int, int, int, int], sx: float, sy: float, scale: float, width: int, height: int
) -> tuple[int, int, int, int] | None:
    """The cell's box in native pixels: the work-scale nucleus box grown ``scale`` times about its
    centre, mapped back and clipped to the image; ``None`` when nothing is left."""
    x, y, w, h = nucleus_box
    cx, cy = (x + w / 2.0) * sx, (y + h / 2.0) * sy
    half_w, half_h = w * sx * scale / 2.0, h * sy * scale / 2.0
    x0, y0 = max(0, int(round(cx - half_w))), max(0, int(round(cy - half_h)))
    x1, y1 = min(width, int(round(cx + half_w))), min(height, int(round(cy + half_h)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0


def find_cells(image_bgr: np.ndarray, spec: FinderSpec) -> list[FoundCell]:
    """The white cells of ``image_bgr`` (uint8 BGR [H, W, 3]), largest nucleus first, at most
    ``spec.max_cells``; boxes in native pixels, inside the image.

    Raises:
        ValueError: not a non-empty uint8 3-channel image.
    """
    _check_image(image_bgr)
    height, width = image_bgr.shape[:2]
    scale = min(1.0, spec.work_max_side_px / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
    else:
        work = image_bgr
    sx, sy = width / work.shape[1], height / work.shape[0]
    to_native = sx * sy  # native pixels per work pixel
    min_radius = float(np.sqrt(spec.min_nucleus_area_px / to_native / np.pi))
    largest_cell = 2.0 * float(np.sqrt(spec.max_nucleus_area_px / to_native / np.pi)) * spec.cell_scale
    mask = _nucleus_mask(work, spec, min_radius, largest_cell)

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    native = stats[:, cv2.CC_STAT_AREA] * to_native
    # A clump is split into at most a few nuclei: one larger than that is no cell (a smudge, a
    # stain deposit, a dark image) and is not worth a distance transform.
    sized = (native >= spec.min_nucleus_area_px) & (native <= _MAX_CLUMP * spec.max_nucleus_area_px)
    sized[0] = False  # the background
    keep = np.nonzero(sized)[0]
    keep = keep[np.argsort(-native[keep], kind="stable")][:_MAX_COMPONENTS]
    nuclei: list[tuple[int, tuple[int, int, int, int]]] = []  # native area, work-scale box
    for i in keep:
        x, y, w, h = (int(v) for v in stats[i, :4])
        roi = (labels[y : y + h, x : x + w] == i).astype(np.uint8) * np.uint8(255)
        for part in _split(roi, min_radius, spec.split_ratio) if spec.split_touching else [roi]:
            points = cv2.findNonZero(part)
            if points is None:
                continue
            area = float(len(points)) * to_native
            if not spec.min_nucleus_area_px <= area <= spec.max_nucleus_area_px:
                continue
            hull_area = float(cv2.contourArea(cv2.convexHull(points)))
            if hull_area <= 0 or len(points) / hull_area < spec.min_solidity:
                continue
            px, py, pw, ph = cv2.boundingRect(points)
            nuclei.append((int(round(area)), (x + px, y + py, pw, ph)))
    nuclei.sort(key=lambda item: -item[0])

    cells: list[FoundCell] = []
    for area, nucleus_box in nuclei:
        box = _cell_box(nucleus_box, sx, sy, spec.cell_scale, width, height)
        if box is None:
            continue
        centre = (box[0] + box[2] / 2.0, box[1] + box[3] / 2.0)
        cells.append(FoundCell(box=box, nucleus_area_px=area, centre=centre))
        if len(cells) == spec.max_cells:
            break
    return cells


def cut_crop(image_bgr: np.ndarray, centre: tuple[float, float], side: int) -> np.ndarray:
    """The ``side`` x ``side`` square of ``image_bgr`` centred on ``centre`` (x, y), reflect-padded
    (OpenCV's BORDER_REFLECT_101) where it leaves the image. A centre outside the image is moved to
    its nearest edge.

    Raises:
        ValueError: ``side`` < 1 or an empty image.
    """
    if side < 1:
        raise ValueError(f"crop side must be >= 1, got {side}")
    if image_bgr.ndim < 2 or image_bgr.shape[0] == 0 or image_bgr.shape[1] == 0:
        raise ValueError(f"cannot cut a crop from an empty image of shape {image_bgr.shape}")
    height, width = image_bgr.shape[:2]
    cx = min(max(float(centre[0]), 0.0), float(width))
    cy = min(max(float(centre[1]), 0.0), float(height))
    x0, y0 = int(np.floor(cx - side / 2.0)), int(np.floor(cy - side / 2.0))
    x1, y1 = x0 + side, y0 + side
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    inner = image_bgr[ya:yb, xa:xb]
    if xa == x0 and ya == y0 and xb == x1 and yb == y1:
        return np.ascontiguousarray(inner)
    border = cv2.BORDER_REFLECT_101 if min(inner.shape[:2]) > 1 else cv2.BORDER_REPLICATE
    out = cv2.copyMakeBorder(inner, ya - y0, y1 - yb, xa - x0, x1 - xb, border)
    return out
