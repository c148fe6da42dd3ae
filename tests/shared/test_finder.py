"""The white-cell finder on drawn smears: finds nuclei and not red cells, splits touching nuclei,
maps boxes to native pixels, survives any image; and the crop it cuts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from shared.cells.finder import FoundCell, cut_crop, find_cells, nucleus_levels
from shared.cells.spec import FinderSpec

# BGR colours of a Romanowsky-stained smear.
PLASMA = (235, 230, 240)
RED_CELL = (190, 150, 225)
CYTOPLASM = (230, 200, 180)
NUCLEUS = (150, 60, 100)


def smear(
    width: int = 1200,
    height: int = 900,
    cells: tuple[tuple[int, int, int], ...] = (),
    red_cells: int = 150,
    seed: int = 0,
) -> np.ndarray:
    """A drawn field: ``red_cells`` pink discs (overlapping freely) and white cells ``(x, y, r)``,
    each a pale blue cytoplasm disc of radius ``r`` around a purple nucleus of ``0.8 r``."""
    rng = np.random.default_rng(seed)
    layers = np.zeros((height, width), np.float32)  # red cells over each pixel
    disc = np.zeros((45, 45), np.float32)
    cv2.circle(disc, (22, 22), 22, 1.0, -1)
    for _ in range(red_cells):
        x, y = int(rng.integers(-22, width - 22)), int(rng.integers(-22, height - 22))
        xa, ya = max(x, 0), max(y, 0)
        region = layers[ya : y + 45, xa : x + 45]
        region += disc[ya - y : ya - y + region.shape[0], xa - x : xa - x + region.shape[1]]
    # Overlapping red cells darken as on a slide (optical densities add).
    transmission = np.array(RED_CELL, np.float32) / np.array(PLASMA, np.float32)
    image = np.array(PLASMA, np.float32) * transmission ** layers[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    for x, y, r in cells:
        cv2.circle(image, (x, y), r, CYTOPLASM, -1, lineType=cv2.LINE_AA)
    for x, y, r in cells:
        cv2.circle(image, (x, y), int(r * 0.8), NUCLEUS, -1, lineType=cv2.LINE_AA)
    return cv2.GaussianBlur(image, (0, 0), 1.0)


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def truth_box(x: int, y: int, r: int) -> tuple[int, int, int, int]:
    return x - r, y - r, 2 * r + 1, 2 * r + 1


def test_finds_each_white_cell_and_no_red_cell() -> None:
    cells = ((200, 200, 40), (600, 450, 55), (1000, 700, 30), (300, 750, 45))
    found = find_cells(smear(cells=cells), FinderSpec())
    assert len(found) == len(cells)
    for x, y, r in cells:
        best = max(iou(truth_box(x, y, r), c.box) for c in found)
        assert best > 0.7, (x, y, r, [c.box for c in found])


def test_red_cells_alone_are_not_nuclei_however_they_stack() -> None:
    image = smear(red_cells=900)  # dense: many three- and four-layer overlaps
    levels = nucleus_levels(image)
    assert int(np.percentile(levels, 99.9)) < 20  # nuclei score > 60
    assert find_cells(image, FinderSpec()) == []


def test_largest_nucleus_first_and_at_most_max_cells() -> None:
    cells = ((200, 200, 30), (600, 450, 55), (1000, 300, 42))
    found = find_cells(smear(cells=cells), FinderSpec())
    areas = [c.nucleus_area_px for c in found]
    assert areas == sorted(areas, reverse=True) and len(found) == 3
    assert abs(found[0].centre[0] - 600) < 4 and abs(found[0].centre[1] - 450) < 4
    two = find_cells(smear(cells=cells), FinderSpec(max_cells=2))
    assert [c.box for c in two] == [c.box for c in found[:2]]


def test_touching_nuclei_are_split_and_one_is_not() -> None:
    touching = ((500, 400, 50), (575, 400, 50))  # nuclei of radius 40 overlap by 5 px
    found = find_cells(smear(cells=touching), FinderSpec())
    assert len(found) == 2
    for x, y, r in touching:
        assert max(iou(truth_box(x, y, r), c.box) for c in found) > 0.6
    merged = find_cells(smear(cells=touching), FinderSpec(split_touching=False))
    assert len(merged) == 1


def test_size_and_threshold_settings_are_obeyed() -> None:
    image = smear(cells=((300, 300, 25), (800, 500, 60)))
    small_nucleus = np.pi * 20**2
    found = find_cells(image, FinderSpec(min_nucleus_area_px=int(small_nucleus * 1.5)))
    assert len(found) == 1 and abs(found[0].centre[0] - 800) < 4
    assert find_cells(image, FinderSpec(nucleus_threshold=0.99)) == []
    assert len(find_cells(image, FinderSpec(nucleus_threshold=0.3))) == 2


def test_boxes_are_in_native_pixels_whatever_the_work_scale() -> None:
    cells = ((700, 500, 60), (1800, 1300, 45))
    image = smear(width=2400, height=1800, cells=cells, red_cells=500)
    for work in (600, 1200, 2400):
        found = find_cells(image, FinderSpec(work_max_side_px=work))
        assert len(found) == 2, work
        for x, y, r in cells:
            assert max(iou(truth_box(x, y, r), c.box) for c in found) > 0.6, work


def test_a_big_cell_filling_a_small_image_is_not_taken_for_background() -> None:
    # The background is sought between cells at least the largest cell apart, whatever the image
    # size: inside a 110 px cell of a 257 px image there is no plasma to measure against.
    image = smear(width=257, height=257, cells=((128, 128, 55),), red_cells=12)
    (cell,) = find_cells(image, FinderSpec())
    assert iou(truth_box(128, 128, 55), cell.box) > 0.7


def test_a_cell_cut_by_the_border_gets_a_box_inside_the_image() -> None:
    image = smear(cells=((20, 300, 50),))
    (cell,) = find_cells(image, FinderSpec())
    x, y, w, h = cell.box
    assert x == 0 and y >= 0 and y + h <= image.shape[0] and w > 30


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((10, 10), np.uint8), "BGR image"),
        (np.zeros((10, 10, 4), np.uint8), "BGR image"),
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
    ],
)
def test_bad_images_are_refused_clearly(image: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        find_cells(image, FinderSpec())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    image=arrays(
        np.uint8,
        st.tuples(st.integers(1, 48), st.integers(1, 48), st.just(3)),
        elements=st.integers(0, 255),
    ),
    work=st.integers(256, 400),
    split=st.booleans(),
)
def test_any_small_image_gives_a_list_of_boxes_inside_it(image: np.ndarray, work: int, split: bool) -> None:
    spec = FinderSpec(work_max_side_px=work, min_nucleus_area_px=1, split_touching=split, max_cells=5)
    found = find_cells(image, spec)
    assert isinstance(found, list) and len(found) <= 5
    h, w = image.shape[:2]
    for cell in found:
        assert isinstance(cell, FoundCell)
        x, y, bw, bh = cell.box
        assert x >= 0 and y >= 0 and bw >= 1 and bh >= 1 and x + bw <= w and y + bh <= h


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), side=st.sampled_from([300, 700]))
def test_noise_and_blobs_at_larger_sizes_stay_bounded(seed: int, side: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (side, side * 4 // 3, 3), dtype=np.uint8)
    if seed % 2:
        image = cv2.GaussianBlur(image, (0, 0), 3.0)  # blobs of every colour
    found = find_cells(image, FinderSpec(min_nucleus_area_px=1))
    h, w = image.shape[:2]
    assert len(found) <= FinderSpec().max_cells
    assert all(c.box[0] + c.box[2] <= w and c.box[1] + c.box[3] <= h for c in found)


def test_cut_crop_is_centred_inside_the_image() -> None:
    image = np.arange(400 * 300 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8)
    crop = cut_crop(image, (200.5, 150.5), 101)  # a box (150, 100, 101, 101) has this centre
    assert crop.shape == (101, 101, 3) and crop.flags["C_CONTIGUOUS"]
    assert np.array_equal(crop, image[100:201, 150:251])
    even = cut_crop(image, (200.0, 150.0), 100)
    assert np.array_equal(even, image[100:200, 150:250])


def test_cut_crop_reflects_at_the_borders() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    crop = cut_crop(image, (5.0, 110.0), 64)
    padded = cv2.copyMakeBorder(image, 64, 64, 64, 64, cv2.BORDER_REFLECT_101)
    x0, y0 = 5 - 32 + 64, 110 - 32 + 64
    assert np.array_equal(crop, padded[y0 : y0 + 64, x0 : x0 + 64])


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (5, 1, 3), (3, 3, 3)])
def test_cut_crop_of_a_tiny_image_has_the_asked_side(shape: tuple[int, int, int]) -> None:
    crop = cut_crop(np.full(shape, 9, np.uint8), (0.0, 0.0), 33)
    assert crop.shape == (33, 33, 3) and int(crop.min()) == 9 == int(crop.max())


def test_cut_crop_moves_a_centre_outside_the_image_to_its_edge() -> None:
    image = np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    assert np.array_equal(cut_crop(image, (-500.0, 25.0), 20), cut_crop(image, (0.0, 25.0), 20))
    with pytest.raises(ValueError, match="side"):
        cut_crop(image, (10.0, 10.0), 0)
