"""Bottleneck training: frozen pretrained body, pre-logits cached on disk, only the final layer trained.

Steps of :func:`train_bottleneck`:

1. Restore the pretrained checkpoint (all but the excluded heads) into an inference graph and
   compute the ``PreLogits`` (2048-d for Inception V3 at depth multiplier 1) of every image once:
   training images ``augmentations`` times (copy 0 unaugmented, copies 1.. with seeded stateless
   flips, quarter turns and colour jitter), validation images once.
2. Cache each vector as ``work_dir/bottlenecks/<tag>/<sha256>-<copy>.npy``. The tag hashes the
   checkpoint's index file, network, image size, depth multiplier and seed, so a cache entry
   is reused only for the same inputs; re-runs skip the expensive part.
3. Train a softmax layer on the cached vectors (class weights, L2 weight decay, label smoothing,
   seeded minibatches) for ``steps`` steps, validating every ``eval_every`` steps.
4. Write an ordinary full-network checkpoint (pretrained body + the trained layer as
   ``InceptionV3/Logits/Conv2d_1c_1x1``) so evaluation, freezing and export work unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.logs import Progress, kv
from trainer.data import decode_tf, encoded_images, preprocess_for_eval
from trainer.dataset import Sample, Split
from trainer.nets import get_network
from trainer.train_common import class_weights, make_optimizer, prepare_split, session_config, write_result
from trainer.train_config import CHECKPOINT_DIR, HistoryPoint, TrainConfig, TrainResult

log = logging.getLogger(__name__)

BOTTLENECK_DIR = "bottlenecks"
LOGITS_WEIGHTS = "InceptionV3/Logits/Conv2d_1c_1x1/weights"
LOGITS_BIASES = "InceptionV3/Logits/Conv2d_1c_1x1/biases"


def augment_stateless(x01: Any, seed: Any) -> Any:
    """Smear augmentation of one image (flips, quarter turns, light colour jitter), deterministic in ``seed``.

    The same kinds of change as :func:`trainer.data.augment_batch`; stateless, so each cached
    copy is reproducible from (image, copy, seed).
    """
    import tensorflow as tf

    s = [seed + k for k in range(5)]
    x = tf.image.stateless_random_flip_left_right(x01, seed=s[0])
    x = tf.image.stateless_random_flip_up_down(x, seed=s[1])
    k = tf.random.stateless_uniform([], seed=s[2], minval=0, maxval=4, dtype=tf.int32)
    x = tf.image.rot90(x, k)
    x = tf.image.stateless_random_brightness(x, 0.06, seed=s[3])
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, seed=s[4])
    return tf.clip_by_value(x, 0.0, 1.0)


def cache_tag(config: TrainConfig, checkpoint: str) -> str:
    """What the cached vectors depend on, hashed: checkpoint content, network, size, width, seed."""
    h = hashlib.sha256(Path(checkpoint + ".index").read_bytes())
    h.update(f"{config.network}|{config.image_size}|{config.depth_multiplier}|{config.seed}".encode())
    return h.hexdigest()[:16]


class BottleneckCache:
    """``<sha256>-<copy>.npy`` files of pre-logits vectors under one tag folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str, copy: int) -> Path:
        return self.folder / f"{sha256}-{copy}.npy"

    def has(self, sha256: str, copy: int) -> bool:
        return self.path(sha256, copy).is_file()

    def load(self, sha256: str, copy: int) -> np.ndarray:
        return np.asarray(np.load(self.path(sha256, copy)), np.float32)

    def save(self, sha256: str, copy: int, vector: np.ndarray) -> None:
        tmp = self.folder / f".{sha256}-{copy}.tmp.npy"
        np.save(tmp, vector.astype(np.float32))
        tmp.replace(self.path(sha256, copy))


def compute_bottlenecks(
    config: TrainConfig, checkpoint: str, split: Split, jobs: list[tuple[Sample, int]], cache: BottleneckCache
) -> float:
    """Compute and cache the pre-logits of the ``(sample, copy)`` jobs not cached yet (copy 0: as is).

    Images come from the split's source (its TFRecords when imported, else its files), read
    once each in source order by a generator, so memory holds one batch, not the data set.

    Returns:
        seconds spent computing (after the graph is built and the checkpoint restored).
    """
    import tensorflow as tf

    from trainer.restore import restore_saver

    todo: dict[str, list[int]] = {}
    samples: dict[str, Sample] = {}
    for s, c in jobs:
        if not cache.has(s.sha256, c):
            todo.setdefault(s.sha256, []).append(c)
            samples[s.sha256] = s
    count = sum(len(v) for v in todo.values())
    log.info(kv("bottlenecks", total=len(jobs), cached=len(jobs) - count, compute=count))
    if not todo:
        return 0.0

    def source() -> Iterator[tuple[bytes, int, int, bytes]]:
        for sample, data, _ in encoded_images(split, list(samples.values())):
            for copy in todo[sample.sha256]:
                yield data, copy, int(sample.sha256[:12], 16), sample.sha256.encode()

    spec = get_network(config.network)
    graph = tf.Graph()
    with graph.as_default():

        def load(data: Any, copy: Any, image_seed: Any, sha: Any) -> tuple[Any, Any, Any]:
            x = preprocess_for_eval(decode_tf(data), config.image_size)
            seed = tf.stack([image_seed, copy * 1000 + config.seed])
            x = tf.cond(copy > 0, lambda: (augment_stateless(x / 2.0 + 0.5, seed) - 0.5) * 2.0, lambda: x)
            return x, sha, copy

        ds = tf.data.Dataset.from_generator(
            source,
            output_signature=(
                tf.TensorSpec([], tf.string),
                tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.int64),
                tf.TensorSpec([], tf.string),
            ),
        )
        ds = ds.map(load, num_parallel_calls=2, deterministic=True).batch(config.batch_size).prefetch(2)
        iterator = tf.compat.v1.data.make_initializable_iterator(ds)
        images, shas, copies = iterator.get_next()
        _, end_points = spec.build(
            images,
            len(split.labels),
            is_training=False,
            inference=True,
            depth_multiplier=config.depth_multiplier,
        )
        prelogits = tf.reshape(end_points["PreLogits"], [tf.shape(images)[0], -1])
        saver = restore_saver(checkpoint, config.exclusions)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    with (
        tf.compat.v1.Session(graph=graph, config=session_config(config.threads)) as sess,
        Progress(count, "bottlenecks", log, unit="img") as progress,
    ):
        sess.run([init, iterator.initializer])
        saver.restore(sess, checkpoint)
        started = time.perf_counter()
        while True:
            try:
                batch, batch_shas, batch_copies = sess.run([prelogits, shas, copies])
            except tf.errors.OutOfRangeError:
                break
            for vector, sha, copy in zip(batch, batch_shas, batch_copies, strict=True):
                cache.save(sha.decode(), int(copy), vector)
            progress.update(len(batch))
    return time.perf_counter() - started


def _stack(cache: BottleneckCache, jobs: list[tuple[Sample, int]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([cache.load(s.sha256, c) for s, c in jobs])
    y = np.asarray([s.label_index for s, _ in jobs], np.int64)
    return x, y


FitResult = tuple[np.ndarray, np.ndarray, list[HistoryPoint], float | None, float]


def _fit_layer(
    config: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    weights: np.ndarray,
    n_classes: int,
) -> FitResult:
    """Train ``logits = x @ W + b``: ``(W [D, N], b [N], history, final val accuracy, seconds)``."""
    import tensorflow as tf

    dim = x_train.shape[1]
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(config.seed)
        x = tf.compat.v1.placeholder(tf.float32, [None, dim])
        y = tf.compat.v1.placeholder(tf.int64, [None])
        w = tf.compat.v1.get_variable(
            "weights", [dim, n_classes], initializer=tf.compat.v1.truncated_normal_initializer(stddev=0.01)
        )
        b = tf.compat.v1.get_variable("biases", [n_classes], initializer=tf.compat.v1.zeros_initializer())
        logits = tf.matmul(x, w) + b
        example_weights = tf.gather(tf.constant(weights), y)
        loss = tf.compat.v1.losses.softmax_cross_entropy(
            tf.one_hot(y, n_classes), logits, weights=example_weights, label_smoothing=config.label_smoothing
        )
        loss = loss + config.weight_decay * tf.nn.l2_loss(w)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.int32))
        train_op = make_optimizer(config.optimizer, config.learning_rate).minimize(loss)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    rng = np.random.default_rng(config.seed)
    history: list[HistoryPoint] = []
    val_acc: float | None = None
    batch = min(config.batch_size, len(x_train))
    with (
        tf.compat.v1.Session(graph=graph, config=session_config(config.threads)) as sess,
        Progress(config.steps, "train-bottleneck", log, unit="step") as progress,
    ):
        sess.run(init)
        started = time.perf_counter()

        def validate() -> float | None:
            return int(sess.run(correct, {x: x_val, y: y_val})) / len(y_val) if len(y_val) else None

        for step in range(1, config.steps + 1):
            idx = rng.choice(len(x_train), batch, replace=False)
            _, loss_v, n_ok = sess.run([train_op, loss, correct], {x: x_train[idx], y: y_train[idx]})
            if not np.isfinite(loss_v):
                raise FloatingPointError(
                    f"training diverged at step {step} (loss {loss_v}); lower --learning-rate"
                )
            point_val = None
            if step == config.steps or (config.eval_every and step % config.eval_every == 0):
                point_val = validate()
            if step == config.steps:
                val_acc = point_val
            history.append(
                HistoryPoint(
                    step=step, loss=float(loss_v), accuracy=int(n_ok) / batch, val_accuracy=point_val
                )
            )
            progress.update(1, loss=f"{loss_v:.4f}")
        w_v, b_v = sess.run([w, b])
        seconds = time.perf_counter() - started
    return np.asarray(w_v), np.asarray(b_v), history, val_acc, seconds


def _write_full_checkpoint(
    config: TrainConfig, checkpoint: str, n_classes: int, w: np.ndarray, b: np.ndarray, out_prefix: str
) -> str:
    """Pretrained body + the trained layer as one inference checkpoint at ``out_prefix-<steps>``."""
    import tensorflow as tf

    from trainer.restore import restore_saver

    spec = get_network(config.network)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, config.image_size, config.image_size, 3])
        spec.build(
            images, n_classes, is_training=False, inference=True, depth_multiplier=config.depth_multiplier
        )
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
        if LOGITS_WEIGHTS not in variables or LOGITS_BIASES not in variables:
            raise ValueError(
                f"network {config.network} has no {LOGITS_WEIGHTS}; bottleneck mode supports "
                "inception_v3 only"
            )
        assign = [
            variables[LOGITS_WEIGHTS].assign(w.reshape(1, 1, *w.shape)),
            variables[LOGITS_BIASES].assign(b),
        ]
        restorer = restore_saver(checkpoint, config.exclusions)
        saver = tf.compat.v1.train.Saver(var_list=list(variables.values()), save_relative_paths=True)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()
    with tf.compat.v1.Session(graph=graph, config=session_config(config.threads)) as sess:
        sess.run(init)
        restorer.restore(sess, checkpoint)
        sess.run(assign)
        path: str = saver.save(sess, out_prefix, global_step=config.steps, write_meta_graph=False)
    return path


def train_bottleneck(config: TrainConfig) -> TrainResult:
    """Bottleneck training (see the module docstring); same outputs as :func:`trainer.train.train`.

    Raises:
        CheckpointError: the checkpoint is missing or does not fit the network.
        DatasetError / ValueError: as :func:`trainer.train.train`.
    """
    from trainer.restore import resolve_checkpoint

    if config.checkpoint is None:
        raise ValueError("bottleneck mode needs --checkpoint")
    spec = get_network(config.network)
    spec.check_image_size(config.image_size)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(config.checkpoint)
    split = prepare_split(config)
    weights = class_weights(split, config.class_weighting)
    n_classes = len(split.labels)
    started = time.monotonic()
    cache = BottleneckCache(config.work_dir / BOTTLENECK_DIR / cache_tag(config, checkpoint))
    train_jobs = [(s, c) for s in split.train for c in range(config.augmentations)]
    val_jobs = [(s, 0) for s in split.val]
    compute_s = compute_bottlenecks(config, checkpoint, split, train_jobs + val_jobs, cache)
    x_train, y_train = _stack(cache, train_jobs)
    x_val, y_val = (
        _stack(cache, val_jobs)
        if val_jobs
        else (np.zeros((0, x_train.shape[1]), np.float32), np.zeros((0,), np.int64))
    )
    log.info(
        kv(
            "train_start",
            network=spec.name,
            mode="bottleneck",
            features=x_train.shape[1],
            train_vectors=len(x_train),
            val=len(x_val),
            steps=config.steps,
        )
    )
    w, b, history, val_acc, layer_s = _fit_layer(config, x_train, y_train, x_val, y_val, weights, n_classes)
    ckpt_dir = config.work_dir / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = _write_full_checkpoint(
        config, checkpoint, n_classes, w, b, str(ckpt_dir / "model.ckpt")
    )
    return write_result(
        config,
        split,
        checkpoint_path=checkpoint_path,
        history=history,
        val_accuracy=val_acc,
        elapsed_s=time.monotonic() - started,
        phases_s={"bottleneck_compute": round(compute_s, 3), "layer_training": round(layer_s, 3)},
    )
