"""Screening metrics against a confusion matrix counted by hand."""

from __future__ import annotations

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
