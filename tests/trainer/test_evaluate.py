"""Screening metrics against a confusion matrix counted by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.evaluate import compute_metrics, confusion_matrix

LABELS = ["ALL", "normal"]


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    # 10 ALL images: 8 called ALL (TP), 2 called normal (FN).
    # 6 normal images: 1 called ALL (FP), 5 called normal (TN).
    y_true = [0] * 10 + [1] * 6
    y_pred = [0] * 8 + [1] * 2 + [0] * 1 + [1] * 5
    m = compute_metrics(y_true, y_pred, LABELS)
    assert m.confusion_matrix == [[8, 2], [1, 5]]
    assert m.positive_label == "ALL" and m.n == 16
    assert m.accuracy == pytest.approx(13 / 16)
    assert m.sensitivity == pytest.approx(8 / 10)
    assert m.specificity == pytest.approx(5 / 6)
    assert m.precision == pytest.approx(8 / 9)
    assert m.f1 == pytest.approx(2 * (8 / 9) * (8 / 10) / ((8 / 9) + (8 / 10)))


def test_positive_label_can_be_chosen_and_defaults_to_all() -> None:
    y_true, y_pred = [1, 1, 1, 0], [1, 0, 1, 0]
    m = compute_metrics(y_true, y_pred, ["normal", "ALL"])  # ALL is index 1 here
    assert m.positive_label == "ALL"
    assert (m.sensitivity, m.specificity, m.precision) == (pytest.approx(2 / 3), 1.0, 1.0)
    other = compute_metrics(y_true, y_pred, ["normal", "ALL"], positive_label="normal")
    assert (other.sensitivity, other.specificity) == (1.0, pytest.approx(2 / 3))
    assert compute_metrics([0, 1], [0, 1], ["a", "b"]).positive_label == "a"


def test_undefined_ratios_are_none_not_invented() -> None:
    m = compute_metrics([1, 1], [1, 1], LABELS)  # no ALL image, no ALL call
    assert m.accuracy == 1.0 and m.specificity == 1.0
    assert m.sensitivity is None and m.precision is None and m.f1 is None
    empty = compute_metrics([], [], LABELS)
    assert empty.n == 0 and empty.accuracy is None


def test_three_classes_count_the_rest_as_negative() -> None:
    labels = ["ALL", "AML", "normal"]
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 0, 1, 2, 0]
    m = compute_metrics(y_true, y_pred, labels)
    assert m.confusion_matrix == [[1, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert m.sensitivity == pytest.approx(1 / 2)
    assert m.specificity == pytest.approx(2 / 4)  # AML->AML and normal->normal among 4 negatives
    assert m.precision == pytest.approx(1 / 3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2 entries but y_pred has 1"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="positive label 'AML'"):
        compute_metrics([0], [0], LABELS, positive_label="AML")


def test_wilson_intervals_and_auc_match_hand_computation() -> None:
    from trainer.stats import auc_interval, roc_auc, roc_curve, wilson_interval

    # Same matrix as above: sensitivity 8/10, specificity 5/6, accuracy 13/16, precision 8/9.
    y_true = [0] * 10 + [1] * 6
    y_pred = [0] * 8 + [1] * 2 + [0] * 1 + [1] * 5
    # Positive (ALL) probabilities: the ALL images get 0.9 x5, 0.8 x3, 0.4 x2; normals 0.7, 0.3 x5.
    scores = [0.9] * 5 + [0.8] * 3 + [0.4] * 2 + [0.7] + [0.3] * 5
    m = compute_metrics(y_true, y_pred, LABELS, scores=scores)
    # Wilson 8/10 by hand: centre (0.8 + z²/20) / (1 + z²/10), half z·sqrt(0.016 + z²/400) / (1 + z²/10).
    z = 1.959963984540054
    denom = 1 + z * z / 10
    centre = (0.8 + z * z / 20) / denom
    half = z * (0.016 + z * z / 400) ** 0.5 / denom
    assert m.ci95["sensitivity"] == pytest.approx([centre - half, centre + half], abs=1e-6)
    assert m.ci95["sensitivity"] == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson_interval(0, 5) == (0.0, pytest.approx(0.4345, abs=1e-4))
    assert wilson_interval(3, 3)[1] == 1.0 and wilson_interval(0, 0) is None  # type: ignore[index]
    # AUC by hand over the 10 x 6 (positive, negative) pairs: 0.9 and 0.8 beat every negative
    # (8 x 6 = 48); each 0.4 beats the five 0.3s and loses to 0.7 (2 x 5 = 10): 58 / 60.
    assert m.roc_auc == pytest.approx(58 / 60)
    assert roc_auc([True, False], [0.5, 0.5]) == 0.5 and roc_auc([True], [0.1]) is None
    lo, hi = auc_interval(58 / 60, 10, 6)
    assert m.ci95["roc_auc"] == pytest.approx([lo, hi], abs=1e-6) and lo < 58 / 60 < hi <= 1.0
    fpr, tpr = roc_curve([t == 0 for t in y_true], scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(58 / 60)


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    from trainer.plots import plot_confusion, plot_roc, plot_training

    paths = [
        plot_roc(np.array([0, 0.5, 1]), np.array([0, 0.9, 1]), 0.9, "ALL", tmp_path / "roc.png"),
        plot_confusion([[8, 2], [1, 5]], LABELS, tmp_path / "cm.png"),
        plot_training([1, 2, 3], [0.9, 0.5, 0.3], [0.5, 0.7, 0.9], [3], [0.8], tmp_path / "t.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
