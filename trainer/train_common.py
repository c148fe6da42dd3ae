"""What every training mode does the same way: the run's split and class weights, the TensorFlow
session settings and optimizer, and the result file at the end.

Used by :mod:`trainer.train` (scratch, finetune) and :mod:`trainer.bottleneck`, which import
from here and never from each other; :func:`session_config` serves evaluation too. TensorFlow is
imported only inside the functions that build TensorFlow objects.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, get_args

import numpy as np

from shared.logs import kv
from trainer.dataset import Split, scan_dataset, split_dataset
from trainer.importer import DATASET_FILE, load_import
from trainer.train_config import (
    RESULT_FILE,
    SPLIT_FILE,
    HistoryPoint,
    OptimizerName,
    TrainConfig,
    TrainResult,
)

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


def prepare_split(config: TrainConfig) -> Split:
    """The run's split, saved as ``work_dir/split.json``.

    ``data_dir`` is either an import folder (``leukonet trainer import``: its split and TFRecord
    shards are used as they are, so the run trains on exactly what was imported) or a
    class-per-folder image set (scanned and split here with the config's fractions and seed).

    Raises:
        DatasetError: the data cannot be used (the message says why).
    """
    if (config.data_dir / DATASET_FILE).is_file():
        imported, split = load_import(config.data_dir)
        records = {
            "train": imported.shards["train"],
            "val": imported.shards["validation"],
            "test": imported.shards["test"],
        }
        split = replace(
            split,
            records={
                part: [str(config.data_dir / name) for name in names] for part, names in records.items()
            },
        )
        log.info(
            kv(
                "split_from_import",
                data=config.data_dir,
                layout=imported.layout,
                seed=imported.seed,
                note="the import's split is used; val/test fractions and seed of this run do not apply",
            )
        )
    else:
        dataset = scan_dataset(config.data_dir)
        split = split_dataset(dataset, config.val_fraction, config.test_fraction, config.seed)
    split.save(config.work_dir / SPLIT_FILE)
    log.info(
        kv(
            "split",
            train=len(split.train),
            val=len(split.val),
            test=len(split.test),
            skipped=len(split.skipped),
            fingerprint=split.fingerprint[:16],
            source="tfrecords" if split.records else "files",
        )
    )
    return split


def class_weights(split: Split, weighting: str) -> np.ndarray:
    """Per-class loss weights ``[classes]`` float32: ``n / (classes * n_class)`` over the training
    split for ``"balanced"``, all ones for ``"none"``.

    Raises:
        ValueError: ``"balanced"`` and a class has no training image.
    """
    n_classes = len(split.labels)
    if weighting == "none":
        return np.ones(n_classes, np.float32)
    counts = np.bincount([s.label_index for s in split.train], minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [split.labels[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"training split has no image of {missing}; add images of every class")
    return (counts.sum() / (n_classes * counts)).astype(np.float32)


def session_config(threads: int) -> Any:
    """A ``tf.compat.v1.ConfigProto`` with ``threads`` intra-op threads (0: one per core) and at
    most two inter-op threads."""
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=min(threads, 2) if threads else 0
    )


def make_optimizer(name: str, learning_rate: float) -> Any:
    """A ``tf.compat.v1.train`` optimizer by name (:data:`OPTIMIZERS`), TF-Slim's settings.

    Raises:
        ValueError: ``name`` is not one of :data:`OPTIMIZERS`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    import tensorflow as tf

    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate)
    if name == "rmsprop":
        return tf.compat.v1.train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.9, epsilon=1.0)
    return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=0.9)


def write_result(
    config: TrainConfig,
    split: Split,
    *,
    checkpoint_path: str,
    history: list[HistoryPoint],
    val_accuracy: float | None,
    elapsed_s: float,
    phases_s: dict[str, float] | None = None,
) -> TrainResult:
    """The run's :class:`TrainResult`, saved as ``work_dir/train_result.json`` and logged (``train_done``)."""
    result = TrainResult(
        checkpoint_path=checkpoint_path,
        labels=split.labels,
        history=history,
        val_accuracy=val_accuracy,
        steps=config.steps,
        elapsed_s=round(elapsed_s, 2),
        dataset_fingerprint=split.fingerprint,
        split_path=str(config.work_dir / SPLIT_FILE),
        config=config,
        phases_s=phases_s or {},
    )
    result.save(config.work_dir / RESULT_FILE)
    log.info(
        kv(
            "train_done",
            mode=config.mode,
            steps=config.steps,
            elapsed_s=f"{elapsed_s:.1f}",
            val_accuracy=val_accuracy if val_accuracy is not None else "n/a",
            checkpoint=checkpoint_path,
        )
    )
    return result
