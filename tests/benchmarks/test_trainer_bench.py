"""Trainer benchmarks on generated data: bottleneck vs finetune epoch time, TFRecord input efficiency.

``make bench`` runs this (LEUKONET_BENCH=1, ``-s``) and prints::

    BENCH trainer_bottleneck_speedup_ratio <x> ratio    finetune s/epoch / bottleneck s/epoch
    BENCH trainer_input_pipeline_ratio <x> ratio        steps/s TFRecord input / steps/s in-memory

No ImageNet checkpoint is available offline, so a stand-in "pretrained" checkpoint (same network,
noise-perturbed initial weights) is made first; the timings do not depend on the weights' values.
Both modes run ``EPOCHS`` epochs of the training split (finetune: ``EPOCHS * n_train / batch``
steps; bottleneck: ``EPOCHS`` augmented copies computed from scratch plus as many layer steps),
finetune timed by its ``elapsed_s`` (steps + validation, after graph building), bottleneck by
its compute + layer-training phases (after graph building). The input-pipeline ratio trains the
same network (scratch, one graph per input) for ``STEPS`` timed steps after a warm-up, fed once
from the importer's TFRecord shards (decode + crop + resize every step) and once from one in-memory batch.
Nothing here asserts a speed.

Knobs: ``LEUKONET_BENCH_TRAIN_SIZE`` (input px, default 128), ``LEUKONET_BENCH_TRAIN_DEPTH`` (depth
multiplier, default 0.35), ``LEUKONET_BENCH_TRAIN_STEPS`` (default 60).
"""

from __future__ import annotations

import importlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SIZE = int(os.environ.get("LEUKONET_BENCH_TRAIN_SIZE", "128"))
DEPTH = float(os.environ.get("LEUKONET_BENCH_TRAIN_DEPTH", "0.35"))
STEPS = int(os.environ.get("LEUKONET_BENCH_TRAIN_STEPS", "60"))
WARMUP = 3
EPOCHS = 2
BATCH = 8


@pytest.fixture(scope="module")
def stack() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in ("tensorflow", "keras", "keras.utils.data_utils", "tf_slim", "tf_slim.nets"):
            importlib.import_module(name)


@pytest.fixture(scope="module")
def data(stack: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from trainer.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("bench-data")
    generate_dataset(root, per_class=24, image_size=160, seed=5)
    return root


def _stand_in_checkpoint(out: Path) -> str:
    import tensorflow as tf

    from trainer.nets import get_network

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        get_network("inception_v3").build(
            tf.zeros([1, SIZE, SIZE, 3]), 1001, is_training=True, depth_multiplier=DEPTH
        )
        noise = [
            v.assign_add(tf.random.uniform(v.shape, -0.02, 0.02)) for v in tf.compat.v1.global_variables()
        ]
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(noise)
            return str(saver.save(sess, str(out / "inception_v3.ckpt"), write_meta_graph=False))


def test_bottleneck_vs_finetune_epoch_time(data: Path, tmp_path: Path) -> None:
    from trainer.train import TrainConfig, prepare_split, train

    ckpt = _stand_in_checkpoint(tmp_path)
    common: dict[str, Any] = {
        "data_dir": data,
        "image_size": SIZE,
        "depth_multiplier": DEPTH,
        "batch_size": BATCH,
        "eval_every": 0,
        "checkpoint": ckpt,
    }
    probe = TrainConfig(work_dir=tmp_path / "probe", mode="scratch", **{**common, "checkpoint": None})
    n_train = len(prepare_split(probe).train)
    steps = EPOCHS * math.ceil(n_train / BATCH)
    fine = train(TrainConfig(work_dir=tmp_path / "ft", mode="finetune", steps=steps, **common))
    bott = train(
        TrainConfig(work_dir=tmp_path / "bn", mode="bottleneck", steps=steps, augmentations=EPOCHS, **common)
    )
    # Bottleneck epoch: forward passes of one augmented copy of the training set (the compute
    # phase also covers the validation images once) + one epoch of layer steps. Graph building and
    # restore are one-off costs and left out of both figures as far as each run reports them.
    bn_epoch = (bott.phases_s["bottleneck_compute"] + bott.phases_s["layer_training"]) / EPOCHS
    ft_epoch = fine.elapsed_s / EPOCHS
    print(f"\nBENCH trainer_finetune_s_per_epoch {ft_epoch:.2f} s")
    print(f"BENCH trainer_bottleneck_s_per_epoch {bn_epoch:.2f} s")
    print(f"BENCH trainer_bottleneck_speedup_ratio {ft_epoch / bn_epoch:.2f} ratio")
    assert fine.steps == bott.steps == steps


def _steps_per_second(images: Any, labels: Any) -> float:
    import tensorflow as tf

    from trainer.nets import get_network
    from trainer.train import session_config

    logits, _ = get_network("inception_v3").build(
        images, 2, is_training=True, depth_multiplier=DEPTH, batch_norm_decay=0.9
    )
    loss = tf.compat.v1.losses.sparse_softmax_cross_entropy(labels, logits)
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        train_op = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss)
    with tf.compat.v1.Session(config=session_config(0)) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        for _ in range(WARMUP):
            sess.run(train_op)
        started = time.perf_counter()
        for _ in range(STEPS):
            sess.run(train_op)
        return STEPS / (time.perf_counter() - started)


def test_input_pipeline_efficiency(data: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.data import tfrecord_dataset
    from trainer.importer import import_dataset

    imported = import_dataset(data, tmp_path / "records", val_fraction=0.1, test_fraction=0.1, shards=2)
    shards = [tmp_path / "records" / name for name in imported.shards["train"]]
    with tf.Graph().as_default():
        images, labels = tf.compat.v1.data.make_one_shot_iterator(
            tfrecord_dataset(shards, SIZE, BATCH, training=True)
        ).get_next()
        records = _steps_per_second(images, labels)
    with tf.Graph().as_default():
        batch = tf.constant(np.random.default_rng(1).uniform(-1, 1, (BATCH, SIZE, SIZE, 3)), tf.float32)
        labels_mem = tf.constant([0, 1] * (BATCH // 2), tf.int32)
        memory = tf.data.Dataset.from_tensors((batch, labels_mem)).cache().repeat()
        images, labels = tf.compat.v1.data.make_one_shot_iterator(memory).get_next()
        in_memory = _steps_per_second(images, labels)
    print(f"\nBENCH trainer_tfrecord_steps_per_s {records:.3f} steps/s")
    print(f"BENCH trainer_in_memory_steps_per_s {in_memory:.3f} steps/s")
    print(f"BENCH trainer_input_pipeline_ratio {records / in_memory:.3f} ratio")
    assert records > 0 and in_memory > 0
