"""White-cell finder speed and recall on full-size generated fields (2592 x 1944, ALL-IDB1's camera).

``make bench`` runs this (LEUKONET_BENCH=1, ``-s``) and prints::

    BENCH finder_ms_per_field <value> ms        median over the fields, OpenCV on one thread
    BENCH finder_recall_iou50 <value> ratio     white cells found at IoU >= 0.5
    BENCH finder_precision_iou50 <value> ratio  found boxes that match a white cell
    BENCH fields_render_s_per_field <value> s   the generator, for scale

The fields use a seed the finder's defaults were never tuned on. Each field is decoded once; the
timed span is :func:`find_cells` alone (what the agent adds per field before classifying), after
one warm-up call. The agent's budget for the finder is half its per-field time; the goal is below
150 ms. Nothing here asserts a speed.

Knobs: ``LEUKONET_BENCH_FIELDS`` (default 20, at least 10), ``LEUKONET_BENCH_FINDER_THREADS``
(OpenCV threads, default 1).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import cv2
import pytest

from shared.cells.finder import find_cells
from shared.cells.spec import FinderSpec
from trainer.fields import FIELD_HEIGHT, FIELD_WIDTH, decode_field, write_fields
from trainer.finder_eval import evaluate_finder

pytestmark = pytest.mark.bench

N_FIELDS = max(10, int(os.environ.get("LEUKONET_BENCH_FIELDS", "20")))
THREADS = int(os.environ.get("LEUKONET_BENCH_FINDER_THREADS", "1"))
SEED = 4242


def test_finder_speed_and_recall_on_full_size_fields(tmp_path: Path) -> None:
    start = time.perf_counter()
    fields = write_fields(tmp_path / "fields", N_FIELDS, SEED, width=FIELD_WIDTH, height=FIELD_HEIGHT)
    render_s = (time.perf_counter() - start) / N_FIELDS
    spec = FinderSpec()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(THREADS)
    try:
        images = [decode_field(f) for f in fields]
        find_cells(images[0], spec)  # warm-up
        times = []
        for image in images:
            t0 = time.perf_counter()
            find_cells(image, spec)
            times.append((time.perf_counter() - t0) * 1000.0)
        report = evaluate_finder(fields, spec).to_json()
    finally:
        cv2.setNumThreads(threads)
    assert report["fields"] == N_FIELDS and report["truth_cells"] > 0
    print(f"\nBENCH finder_ms_per_field {statistics.median(times):.1f} ms")
    print(f"BENCH finder_recall_iou50 {report['recall']:.4f} ratio")
    print(f"BENCH finder_precision_iou50 {report['precision']:.4f} ratio")
    print(f"BENCH fields_render_s_per_field {render_s:.2f} s")
    print(
        f"finder: {N_FIELDS} fields {FIELD_WIDTH}x{FIELD_HEIGHT}, {THREADS} thread(s), "
        f"truth {report['truth_cells']} found {report['found_cells']} matched {report['matched']}, "
        f"recall CI {report['recall_ci']}, by label {report['recall_by_label']}, "
        f"mean IoU {report['mean_matched_iou']}, ms min/median/max "
        f"{min(times):.1f}/{statistics.median(times):.1f}/{max(times):.1f}"
    )
