"""Evaluation of a checkpoint on a split: screening metrics, per-image CSV and ``report.json``.

Metrics treat one label as the *positive* (disease) class, ``ALL`` by default: sensitivity is the
share of positive images called positive (recall), specificity the share of negative images
called negative, precision the share of positive calls that are right. With more than two labels,
every other label counts as negative. A ratio whose denominator is zero is ``None`` (undefined),
never a made-up 0 or 1.

The confusion matrix is ``matrix[true][predicted]`` in label order. Each ratio carries its 95 %
Wilson interval in ``ci95``; with the positive label's probabilities, ``roc_auc`` (Mann-Whitney)
and its Hanley-McNeil interval too (see :mod:`trainer.stats`). :func:`evaluate` also draws
``roc.png``, ``confusion_matrix.png`` and ``training_curves.png`` next to ``report.json``.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.logs import Progress, kv
from trainer.data import split_input
from trainer.dataset import DatasetError, Sample, Split
from trainer.nets import get_network
from trainer.stats import auc_interval, roc_auc, roc_curve, wilson_interval
from trainer.train_common import session_config
from trainer.train_config import TrainResult

log = logging.getLogger(__name__)

DEFAULT_POSITIVE_LABEL = "ALL"
REPORT_FILE = "report.json"
PREDICTIONS_FILE = "predictions.csv"


class Metrics(BaseModel):
    """Binary screening metrics (positive vs the rest) and the full confusion matrix."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(title="images evaluated")
    labels: list[str]
    positive_label: str
    accuracy: float | None
    sensitivity: float | None = Field(title="TP / (TP + FN), recall of the positive label")
    specificity: float | None = Field(title="TN / (TN + FP)")
    precision: float | None = Field(title="TP / (TP + FP)")
    f1: float | None = Field(title="2 * precision * sensitivity / (precision + sensitivity)")
    confusion_matrix: list[list[int]] = Field(title="[true][predicted] counts in label order")
    roc_auc: float | None = Field(None, title="ROC-AUC of the positive label's probability (None: not given)")
    ci95: dict[str, list[float] | None] = Field(
        default_factory=dict, title="95 % intervals: Wilson for ratios, Hanley-McNeil for roc_auc"
    )

    def summary(self) -> dict[str, Any]:
        """The scalar figures, rounded for humans and manifests."""
        return {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in self.model_dump(
                include={"n", "accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"}
            ).items()
        }


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``[n_classes, n_classes]`` int counts, rows = true label, columns = predicted label.

    Raises:
        ValueError: lengths differ or an index is outside ``[0, n_classes)``.
    """
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"label indices must be in [0, {n_classes})")
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def compute_metrics(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    labels: Sequence[str],
    positive_label: str | None = None,
    scores: Sequence[float] | None = None,
) -> Metrics:
    """Metrics of predictions ``y_pred`` against ``y_true`` (label indices).

    ``positive_label`` defaults to ``ALL`` when present, else the first label. ``scores``, the
    positive label's probability per image, adds ``roc_auc`` and its interval.

    Raises:
        ValueError: ``positive_label`` is not among ``labels``, or the inputs are inconsistent.
    """
    labels = list(labels)
    if positive_label is None:
        positive_label = DEFAULT_POSITIVE_LABEL if DEFAULT_POSITIVE_LABEL in labels else labels[0]
    if positive_label not in labels:
        raise ValueError(f"positive label {positive_label!r} is not one of {labels}")
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    pos = labels.index(positive_label)
    tp = int(matrix[pos, pos])
    fn = int(matrix[pos].sum()) - tp
    fp = int(matrix[:, pos].sum()) - tp
    n = int(matrix.sum())
    tn = n - tp - fn - fp
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = (
        2 * precision * sensitivity / (precision + sensitivity)
        if precision is not None and sensitivity is not None and precision + sensitivity > 0
        else None
    )

    def ci(k: int, total: int) -> list[float] | None:
        interval = wilson_interval(k, total)
        return [round(interval[0], 6), round(interval[1], 6)] if interval else None

    ci95 = {
        "accuracy": ci(int(np.trace(matrix)), n),
        "sensitivity": ci(tp, tp + fn),
        "specificity": ci(tn, tn + fp),
        "precision": ci(tp, tp + fp),
    }
    auc = None
    if scores is not None:
        if len(scores) != n:
            raise ValueError(f"scores has {len(scores)} entries but y_true has {n}")
        is_pos = [t == pos for t in y_true]
        auc = roc_auc(is_pos, scores)
        if auc is not None:
            lo, hi = auc_interval(auc, sum(is_pos), n - sum(is_pos))
            ci95["roc_auc"] = [round(lo, 6), round(hi, 6)]
    return Metrics(
        n=n,
        labels=labels,
        positive_label=positive_label,
        accuracy=_ratio(int(np.trace(matrix)), n),
        sensitivity=sensitivity,
        specificity=_ratio(tn, tn + fp),
        precision=precision,
        f1=f1,
        confusion_matrix=matrix.tolist(),
        roc_auc=auc,
        ci95=ci95,
    )


def predict_checkpoint(
    checkpoint_path: str,
    split: Split,
    part: str,
    *,
    network: str,
    image_size: int,
    depth_multiplier: float,
    batch_size: int = 16,
    threads: int = 0,
) -> np.ndarray:
    """Probabilities ``[len(samples), n_classes]`` of the checkpoint on one split part (sample order).

    Uses the TF evaluation pipeline (:func:`trainer.data.split_input` with ``training=False``:
    the part's TFRecords when the split was imported, else its files) and the inference graph
    (batch-norm moving averages, no auxiliary head).

    Raises:
        DatasetError: the source yielded another number of images than the part has samples.
    """
    import tensorflow as tf

    samples = split.part(part)
    n_classes = len(split.labels)
    spec = get_network(network)
    graph = tf.Graph()
    with graph.as_default():
        ds = split_input(split, part, image_size, batch_size, training=False)
        images, _ = tf.compat.v1.data.make_one_shot_iterator(ds).get_next()
        logits, _ = spec.build(
            images, n_classes, is_training=False, inference=True, depth_multiplier=depth_multiplier
        )
        probs = tf.nn.softmax(logits)
        saver = tf.compat.v1.train.Saver(var_list=tf.compat.v1.global_variables())
    graph.finalize()
    out: list[np.ndarray] = []
    with (
        tf.compat.v1.Session(graph=graph, config=session_config(threads)) as sess,
        Progress(len(samples), "predict", log, unit="img") as progress,
    ):
        saver.restore(sess, checkpoint_path)
        while True:
            try:
                batch = sess.run(probs)
            except tf.errors.OutOfRangeError:
                break
            out.append(batch)
            progress.update(len(batch))
    probs = np.concatenate(out, axis=0) if out else np.zeros((0, n_classes), np.float32)
    if len(probs) != len(samples):
        raise DatasetError(
            f"the {part} split lists {len(samples)} images but its source gave {len(probs)}; "
            "the import or image folder changed since the split was made"
        )
    return probs


class EvaluationReport(BaseModel):
    """``report.json``: the metrics of one checkpoint on one split."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: str
    checkpoint_path: str
    dataset_fingerprint: str
    metrics: Metrics
    report_path: str
    predictions_path: str
    plots: dict[str, str] = Field(default_factory=dict, title="plot name -> PNG path")
    cells: dict[str, Any] | None = Field(
        None, title="cell models: finder, field and whole-image metrics on the evaluation fields"
    )


def evaluate(
    result: TrainResult, out_dir: str | Path, *, split_name: str = "test", positive_label: str | None = None
) -> EvaluationReport:
    """Evaluate ``result``'s checkpoint on its ``split_name`` split; write the CSV and ``report.json``.

    Raises:
        DatasetError: the split file cannot be read, or the split is empty.
        ValueError: ``split_name`` is not train/val/test.
    """
    split = Split.load(result.split_path)
    samples: list[Sample] = split.part(split_name)
    cfg = result.config
    probs = predict_checkpoint(
        result.checkpoint_path,
        split,
        split_name,
        network=cfg.network,
        image_size=cfg.image_size,
        depth_multiplier=cfg.depth_multiplier,
        batch_size=cfg.batch_size,
        threads=cfg.threads,
    )
    y_true = [s.label_index for s in samples]
    y_pred = [int(i) for i in probs.argmax(axis=1)]
    metrics = compute_metrics(y_true, y_pred, split.labels, positive_label)
    pos = split.labels.index(metrics.positive_label)
    scores = [float(p[pos]) for p in probs]
    metrics = compute_metrics(y_true, y_pred, split.labels, positive_label, scores=scores)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions_path = out / PREDICTIONS_FILE
    with open(predictions_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "path",
                "sha256",
                "true_label",
                "predicted_label",
                "correct",
                *[f"p_{label}" for label in split.labels],
            ]
        )
        for s, pred, p in zip(samples, y_pred, probs, strict=True):
            writer.writerow(
                [
                    s.path,
                    s.sha256,
                    s.label,
                    split.labels[pred],
                    int(pred == s.label_index),
                    *[f"{v:.6f}" for v in p],
                ]
            )
    plots = _plots(result, metrics, [t == pos for t in y_true], scores, out)
    report = EvaluationReport(
        split=split_name,
        checkpoint_path=result.checkpoint_path,
        dataset_fingerprint=split.fingerprint,
        metrics=metrics,
        report_path=str(out / REPORT_FILE),
        predictions_path=str(predictions_path),
        plots=plots,
    )
    (out / REPORT_FILE).write_text(json.dumps(report.model_dump(mode="json"), indent=2))
    log.info(kv("evaluated", split=split_name, **metrics.summary()))
    return report


def _plots(
    result: TrainResult, metrics: Metrics, is_positive: list[bool], scores: list[float], out: Path
) -> dict[str, str]:
    """Write the ROC, confusion-matrix and training-curve PNGs into ``out``; name -> path."""
    from trainer.plots import plot_confusion, plot_roc, plot_training

    fpr, tpr = roc_curve(is_positive, scores)
    hist = result.history
    val = [h for h in hist if h.val_accuracy is not None]
    return {
        "roc": str(plot_roc(fpr, tpr, metrics.roc_auc, metrics.positive_label, out / "roc.png")),
        "confusion_matrix": str(
            plot_confusion(metrics.confusion_matrix, metrics.labels, out / "confusion_matrix.png")
        ),
        "training_curves": str(
            plot_training(
                [h.step for h in hist],
                [h.loss for h in hist],
                [h.accuracy for h in hist],
                [h.step for h in val],
                [float(h.val_accuracy or 0.0) for h in val],
                out / "training_curves.png",
            )
        ),
    }
