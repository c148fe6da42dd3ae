"""The finder's evaluation: box matching, the acceptance bar on held-out generated fields, ALL-IDB1
blast centroids (.xyc), and `trainer fields evaluate-finder`."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from shared.cells.spec import FinderSpec
from trainer.allidb1 import (
    MAX_XYC_BYTES,
    MAX_XYC_LINES,
    XycError,
    evaluate_finder_on_centroids,
    find_xyc_pairs,
    read_xyc,
)
from trainer.cli_fields import fields_cmd
from trainer.fields import FieldTruth, box_centre, write_fields
from trainer.finder_eval import evaluate_finder, iou_matrix, match_boxes

# Held out: the finder's defaults were tuned on seeds 1000, 2000 and 31, never on this one.
HELD_OUT_SEED = 7
N_FIELDS = 12


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> list[FieldTruth]:
    return write_fields(tmp_path_factory.mktemp("held_out"), N_FIELDS, HELD_OUT_SEED, width=1024, height=768)


def test_iou_of_boxes() -> None:
    m = iou_matrix([(0, 0, 10, 10), (100, 100, 5, 5)], [(0, 0, 10, 10), (5, 0, 10, 10), (50, 50, 1, 1)])
    assert m.shape == (2, 3)
    assert m[0, 0] == 1.0 and m[0, 1] == pytest.approx(50 / 150) and m[0, 2] == 0.0
    assert (m[1] == 0).all()
    assert iou_matrix([], [(0, 0, 1, 1)]).shape == (0, 1)


def test_matching_is_one_to_one_best_first() -> None:
    truth = [(0, 0, 10, 10), (3, 0, 10, 10)]
    found = [(1, 0, 10, 10), (0, 0, 10, 10), (40, 40, 10, 10)]
    # found 1 is truth 0 exactly (IoU 1); found 0 would fit truth 0 better (0.82) than truth 1 (0.67)
    # but truth 0 is taken: one-to-one, best pair first.
    assert match_boxes(found, truth, 0.5) == [(1, 0), (0, 1)]
    assert match_boxes(found, truth, 0.7) == [(1, 0)]
    assert match_boxes([], truth) == [] and match_boxes(found, []) == []


def test_acceptance_recall_at_iou_50_on_held_out_fields(held_out: list[FieldTruth]) -> None:
    metrics = evaluate_finder(held_out, FinderSpec())
    report = metrics.to_json()
    assert report["fields"] == N_FIELDS and report["truth_cells"] >= 100
    assert report["recall"] >= 0.95, report
    assert report["precision"] >= 0.9, report
    assert report["recall_by_label"]["ALL"] >= 0.9, report
    lo, hi = report["recall_ci"]
    assert lo < report["recall"] <= hi
    assert report["ms_per_field"] > 0 and report["mean_matched_iou"] > 0.7


def test_the_report_is_flat_and_a_blind_finder_scores_zero(held_out: list[FieldTruth]) -> None:
    report = evaluate_finder(held_out[:2], FinderSpec(nucleus_threshold=1.0)).to_json()
    assert report["found_cells"] == 0 and report["matched"] == 0 and report["recall"] == 0.0
    assert report["precision"] is None and report["precision_ci"] is None
    keys = {"iou", "fields", "truth_cells", "found_cells", "matched", "recall", "recall_ci", "precision"}
    assert keys | {"precision_ci", "recall_by_label", "ms_per_field"} <= set(report)
    with pytest.raises(ValueError, match="iou"):
        evaluate_finder(held_out, FinderSpec(), iou=0.0)


def test_a_field_whose_image_is_wrong_is_skipped(tmp_path: Path, held_out: list[FieldTruth]) -> None:
    bad = tmp_path / "bad.png"
    cv2.imwrite(str(bad), cv2.imread(str(held_out[0].image))[:100])  # not the size its truth says
    wrong = FieldTruth(image=bad, width=1024, height=768, label="ALL", cells=held_out[0].cells)
    report = evaluate_finder([wrong, held_out[1]], FinderSpec()).to_json()
    assert report["skipped"] == 1 and report["fields"] == 1
    assert report["truth_cells"] == len(held_out[1].cells)


def test_read_xyc_tolerates_crlf_blank_lines_and_tabs(tmp_path: Path) -> None:
    path = tmp_path / "Im001_1.xyc"
    path.write_bytes(b"12 34\r\n\r\n  56\t78  \r\n\n9 10")
    assert read_xyc(path) == [(12, 34), (56, 78), (9, 10)]
    (tmp_path / "empty.xyc").write_bytes(b"")
    assert read_xyc(tmp_path / "empty.xyc") == []


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"12 34\n1.5 2\n", r"Im002_1.xyc:2: expected two integers"),
        (b"12 34 56\n", r":1: expected two integers"),
        (b"-3 4\n", "negative coordinate"),
        (b"\xff\xfe\x00binary", "not a text file"),
        (b"1 1\n" * (MAX_XYC_LINES + 1), "lines, over the limit"),
        (b" " * (MAX_XYC_BYTES + 1), "byte limit"),
    ],
)
def test_bad_xyc_files_name_the_file_and_line(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "Im002_1.xyc"
    path.write_bytes(content)
    with pytest.raises(XycError, match=match) as err:
        read_xyc(path)
    assert str(path) in str(err.value)


def _as_allidb1(fields: list[FieldTruth], folder: Path) -> int:
    """Copy generated fields as ALL-IDB1 does: ImNNN_1.jpg + ImNNN_1.xyc with the blast centres."""
    folder.mkdir()
    blasts = 0
    for n, field in enumerate(fields, start=1):
        (folder / f"Im{n:03d}_1.jpg").write_bytes(field.image.read_bytes())
        lines = [
            f"{round(x)} {round(y)}" for x, y in (box_centre(c.box) for c in field.cells if c.label == "ALL")
        ]
        blasts += len(lines)
        (folder / f"Im{n:03d}_1.xyc").write_text("\r\n".join(lines) + "\r\n")
    return blasts


def test_blast_centroids_fall_inside_found_boxes(tmp_path: Path, held_out: list[FieldTruth]) -> None:
    leukemic = [f for f in held_out if f.label == "ALL"]
    assert len(leukemic) >= 3
    blasts = _as_allidb1(leukemic, tmp_path / "idb1")
    pairs = find_xyc_pairs(tmp_path / "idb1")
    assert [p[0].name for p in pairs][:2] == ["Im001_1.jpg", "Im002_1.jpg"]
    report = evaluate_finder_on_centroids(pairs, FinderSpec()).to_json()
    assert report["images"] == len(leukemic) and report["blasts"] == blasts
    assert report["blast_recall"] >= 0.95 and report["blast_recall_one_to_one"] >= 0.9, report
    assert report["found_per_image"] >= 8 and report["blast_recall_ci"][0] > 0.5
    blind = evaluate_finder_on_centroids(pairs, FinderSpec(nucleus_threshold=1.0)).to_json()
    assert blind["blast_recall"] == 0.0 and blind["found_cells"] == 0


def test_a_centroid_outside_its_image_skips_the_pair(tmp_path: Path, held_out: list[FieldTruth]) -> None:
    _as_allidb1(held_out[:2], tmp_path / "idb1")
    (tmp_path / "idb1" / "Im001_1.xyc").write_text("5000 10\n")
    report = evaluate_finder_on_centroids(find_xyc_pairs(tmp_path / "idb1"), FinderSpec()).to_json()
    assert report["skipped"] == 1 and report["images"] == 1


def test_xyc_pairs_need_files_and_images(tmp_path: Path) -> None:
    with pytest.raises(XycError, match="no .xyc files"):
        find_xyc_pairs(tmp_path)
    (tmp_path / "Im009_1.xyc").write_text("1 2\n")
    with pytest.raises(XycError, match="no image Im009_1.jpg"):
        find_xyc_pairs(tmp_path)


def test_cli_evaluates_sidecars_and_centroids(tmp_path: Path, held_out: list[FieldTruth]) -> None:
    folder = held_out[0].image.parent
    result = CliRunner().invoke(fields_cmd, ["evaluate-finder", str(folder)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["fields"] == N_FIELDS and report["recall"] >= 0.95

    spec = tmp_path / "manifest.json"
    spec.write_text(json.dumps({"name": "m", "cells": {"finder": {"nucleus_threshold": 1.0}}}))
    blind = CliRunner().invoke(fields_cmd, ["evaluate-finder", str(folder), "--spec", str(spec)])
    assert json.loads(blind.output.strip().splitlines()[-1])["found_cells"] == 0

    _as_allidb1([f for f in held_out if f.label == "ALL"], tmp_path / "idb1")
    xyc = CliRunner().invoke(fields_cmd, ["evaluate-finder", str(tmp_path / "idb1"), "--xyc"])
    assert xyc.exit_code == 0, xyc.output
    assert json.loads(xyc.output.strip().splitlines()[-1])["blast_recall"] >= 0.95


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{", "not JSON"),
        ('{"min_solidity": 3}', "min_solidity"),
        ('{"colour": 1}', "colour"),
        ("[1]", "object"),
    ],
)
def test_cli_names_a_bad_spec_file(tmp_path: Path, content: str, match: str) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(content)
    result = CliRunner().invoke(fields_cmd, ["evaluate-finder", str(tmp_path), "--spec", str(spec)])
    assert result.exit_code == 1 and match in result.output and "spec.json" in result.output


def test_cli_names_an_empty_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(fields_cmd, ["evaluate-finder", str(tmp_path)])
    assert result.exit_code == 1 and "no NAME.json sidecars" in result.output
