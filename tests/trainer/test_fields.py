"""Generated smear fields: deterministic, cells where the truth says and as big as in single-cell
images, sidecars read back strictly, crops cut the agent's way; and `trainer fields generate`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from shared.cells.finder import cut_crop
from trainer.cli_fields import fields_cmd
from trainer.fields import (
    MAX_SIDECAR_BYTES,
    FieldTruth,
    FieldTruthError,
    TruthCell,
    cut_crops,
    load_fields,
    render_field,
    write_fields,
)
from trainer.synthetic import CELL_IMAGE_PX

W, H = 1024, 768


def _purple(image_bgr: np.ndarray) -> np.ndarray:
    """Pixels as purple as a nucleus (green well below red and blue)."""
    b, g, r = (image_bgr[..., i].astype(int) for i in range(3))
    return (g < 120) & (b > g + 30) & (r > g + 10)


def test_same_rng_same_field_and_truth() -> None:
    a, ta = render_field(np.random.default_rng([3, 1]), "ALL", W, H)
    b, tb = render_field(np.random.default_rng([3, 1]), "ALL", W, H)
    c, _ = render_field(np.random.default_rng([3, 2]), "ALL", W, H)
    assert a.shape == (H, W, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ta == tb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("seed", range(6))
def test_leukemic_fields_hold_two_to_six_blasts_and_normal_fields_none(seed: int) -> None:
    _, leukemic = render_field(np.random.default_rng(seed), "ALL", 1600, 1200)
    _, normal = render_field(np.random.default_rng(seed), "normal", 1600, 1200)
    assert 2 <= sum(c.label == "ALL" for c in leukemic) <= 6
    assert 8 <= len(leukemic) <= 20 and 8 <= len(normal) <= 20
    assert all(c.label == "normal" for c in normal)


def test_truth_boxes_hold_the_nuclei_and_nothing_purple_lies_outside() -> None:
    image, truth = render_field(np.random.default_rng(11), "ALL", W, H, n_white=10)
    assert len(truth) == 10
    purple = _purple(image)
    inside = np.zeros_like(purple)
    for cell in truth:
        x, y, w, h = cell.box
        assert x >= 0 and y >= 0 and x + w <= W and y + h <= H
        assert purple[y : y + h, x : x + w].mean() > 0.25  # the nucleus fills much of the box
        inside[y : y + h, x : x + w] = True
    assert purple[~inside].mean() < 0.001  # red cells and plasma are not purple


def test_cells_are_drawn_at_the_single_cell_images_scale() -> None:
    # In a 257 px single-cell image a lymphocyte is 46-72 px across and a blast 67-108 px
    # (trainer.synthetic); a field draws them at that same native scale.
    sizes: dict[str, list[int]] = {"ALL": [], "normal": []}
    for seed in range(4):
        _, truth = render_field(np.random.default_rng(seed), "ALL", 1600, 1200)
        for cell in truth:
            sizes[cell.label].append(max(cell.box[2], cell.box[3]))
    assert CELL_IMAGE_PX == 257
    assert min(sizes["normal"]) >= 40 and max(sizes["normal"]) <= 80
    assert min(sizes["ALL"]) >= 60 and max(sizes["ALL"]) <= 120
    assert np.mean(sizes["ALL"]) > np.mean(sizes["normal"]) + 15


def test_white_cells_may_touch_but_never_bury_each_other() -> None:
    touching = 0
    for seed in range(6):
        _, truth = render_field(np.random.default_rng(seed), "normal", W, H, n_white=16)
        centres = [(x + w / 2, y + h / 2, (w + h) / 4) for x, y, w, h in (c.box for c in truth)]
        for i, (xa, ya, ra) in enumerate(centres):
            for xb, yb, rb in centres[i + 1 :]:
                d = np.hypot(xa - xb, ya - yb)
                assert d >= 0.8 * (ra + rb)  # at most a rim overlaps
                touching += d < ra + rb
    assert touching >= 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("AML", W, H, None), "unknown field label"),
        (("ALL", 100, H, None), "width 100"),
        (("ALL", W, 20_000, None), "height 20000"),
        (("ALL", W, H, 0), "n_white 0"),
        (("normal", W, H, -1), "n_white -1"),
    ],
)
def test_bad_render_arguments_are_named(args: tuple[str, int, int, int | None], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        render_field(np.random.default_rng(0), *args)


def test_a_normal_field_may_hold_no_white_cell() -> None:
    image, truth = render_field(np.random.default_rng(0), "normal", W, H, n_white=0)
    assert truth == [] and not _purple(image).any()


def test_write_and_load_round_trip(tmp_path: Path) -> None:
    fields = write_fields(tmp_path / "f", 3, seed=5, width=640, height=480, leukemic_fraction=0.5)
    assert [f.image.name for f in fields] == ["field-00000.jpg", "field-00001.jpg", "field-00002.jpg"]
    assert load_fields(tmp_path / "f") == fields
    side = json.loads(fields[0].image.with_suffix(".json").read_text())
    assert set(side) == {"width", "height", "label", "cells"} and side["width"] == 640
    assert all(set(c) == {"box", "label"} and len(c["box"]) == 4 for c in side["cells"])
    image = cv2.imread(str(fields[0].image))
    assert image.shape == (480, 640, 3)


def test_field_i_depends_only_on_seed_and_i(tmp_path: Path) -> None:
    two = write_fields(tmp_path / "a", 2, seed=9, width=640, height=480)
    three = write_fields(tmp_path / "b", 3, seed=9, width=640, height=480)
    other = write_fields(tmp_path / "c", 2, seed=10, width=640, height=480)
    for a, b in zip(two, three, strict=False):
        assert a.image.read_bytes() == b.image.read_bytes() and a.cells == b.cells
    assert two[0].image.read_bytes() != other[0].image.read_bytes()


def test_leukemic_fraction_sets_the_labels(tmp_path: Path) -> None:
    assert {f.label for f in write_fields(tmp_path / "a", 3, 0, 640, 480, leukemic_fraction=1.0)} == {"ALL"}
    assert {f.label for f in write_fields(tmp_path / "b", 3, 0, 640, 480, leukemic_fraction=0.0)} == {
        "normal"
    }


def test_refuses_to_mix_and_bad_counts(tmp_path: Path) -> None:
    write_fields(tmp_path, 1, seed=0, width=640, height=480)
    with pytest.raises(ValueError, match="already holds field sidecars"):
        write_fields(tmp_path, 1, seed=1, width=640, height=480)
    with pytest.raises(ValueError, match="count"):
        write_fields(tmp_path / "x", 0, seed=1)
    with pytest.raises(ValueError, match="leukemic_fraction"):
        write_fields(tmp_path / "x", 1, seed=1, leukemic_fraction=1.5)


def _one_field(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "f.png"), np.full((100, 120, 3), 230, np.uint8))
    return folder / "f.json"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "f.json: document"),
        ('{"width": 120, "height": 100, "label": "ALL"}', "cells"),
        ('{"width": 120, "height": 100, "label": "ALL", "cells": [], "extra": 1}', "extra"),
        ('{"width": "120", "height": 100, "label": "ALL", "cells": []}', "width"),
        ('{"width": 120, "height": 100, "label": "ALL", "cells": [{"box": [1, 2, 3], "label": "x"}]}', "box"),
        (
            '{"width": 120, "height": 100, "label": "ALL", "cells": [{"box": [100, 2, 30, 5], "label": "x"}]}',  # noqa: E501
            r"cells.0.box \[100, 2, 30, 5\] is empty or outside the 120x100",
        ),
        (
            '{"width": 120, "height": 100, "label": "ALL", "cells": [{"box": [1, 2, 0, 5], "label": "x"}]}',
            "empty or outside",
        ),
        (
            json.dumps(
                {
                    "width": 120,
                    "height": 100,
                    "label": "ALL",
                    "cells": [{"box": [0, 0, 1, 1], "label": "a"}] * 5000,
                }
            ),
            "cells",
        ),
    ],
)
def test_malformed_sidecars_are_named_with_the_fix(tmp_path: Path, content: str, match: str) -> None:
    path = _one_field(tmp_path)
    path.write_text(content)
    with pytest.raises(FieldTruthError, match=match) as err:
        load_fields(tmp_path)
    assert str(path) in str(err.value)


def test_oversized_sidecar_missing_image_and_empty_folder(tmp_path: Path) -> None:
    path = _one_field(tmp_path / "big")
    path.write_bytes(b" " * (MAX_SIDECAR_BYTES + 1))
    with pytest.raises(FieldTruthError, match="byte limit"):
        load_fields(tmp_path / "big")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "g.json").write_text('{"width": 10, "height": 10, "label": "normal", "cells": []}')
    with pytest.raises(FieldTruthError, match="no image beside it"):
        load_fields(lone)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FieldTruthError, match="fields generate"):
        load_fields(tmp_path / "empty")
    with pytest.raises(FieldTruthError, match="not a folder"):
        load_fields(tmp_path / "nowhere")


def test_crops_are_cut_around_each_truth_cell_the_agents_way(tmp_path: Path) -> None:
    fields = write_fields(tmp_path / "f", 2, seed=3, width=640, height=480, leukemic_fraction=1.0)
    counts = cut_crops(fields, tmp_path / "crops", crop_side=129)
    cells = [c for f in fields for c in f.cells]
    assert sum(counts.values()) == len(cells) and counts["ALL"] >= 2
    assert sorted(p.parent.name for p in (tmp_path / "crops").rglob("*.png")).count("ALL") == counts["ALL"]
    first = fields[0]
    cell = first.cells[0]
    crop = cv2.imread(str(tmp_path / "crops" / cell.label / "field-00000-000.png"))
    x, y, w, h = cell.box
    image = cv2.imread(str(first.image))
    assert np.array_equal(crop, cut_crop(image, (x + w / 2, y + h / 2), 129))
    assert crop.shape == (129, 129, 3) and _purple(crop)[50:80, 50:80].mean() > 0.3


def test_an_unreadable_field_is_skipped_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    fields = write_fields(tmp_path / "f", 2, seed=4, width=640, height=480)
    fields[0].image.write_bytes(b"not an image")
    counts = cut_crops(fields, tmp_path / "crops")
    assert sum(counts.values()) == len(fields[1].cells)
    assert "crop_field_skipped" in caplog.text
    broken = FieldTruth(
        image=fields[0].image, width=640, height=480, label="ALL", cells=(TruthCell((0, 0, 9, 9), "ALL"),)
    )
    with pytest.raises(FieldTruthError, match="no crop written"):
        cut_crops([broken], tmp_path / "none")


def test_cli_generates_fields_and_crops(tmp_path: Path) -> None:
    out, crops = tmp_path / "fields", tmp_path / "crops"
    args = ["generate", "--out", str(out), "--count", "2", "--seed", "1", "--size", "640x480"]
    result = CliRunner().invoke(fields_cmd, [*args, "--crops", str(crops), "--crop-side", "97"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["fields"] == 2 and report["size"] == "640x480" and report["crop_side"] == 97
    assert (
        sum(report["crop_counts"].values())
        == report["white_cells"]
        == sum(len(f.cells) for f in load_fields(out))
    )
    again = CliRunner().invoke(fields_cmd, args)
    assert again.exit_code == 1 and "already holds field sidecars" in again.output
    bad = CliRunner().invoke(
        fields_cmd, ["generate", "--out", str(tmp_path / "x"), "--count", "1", "--size", "big"]
    )
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output
