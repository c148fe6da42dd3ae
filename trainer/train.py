"""Training: a TF-Slim network on a class-per-folder data set, in a TF 1.x graph on the CPU.

:func:`train` scans and splits the data (``work_dir/split.json``), trains for ``steps`` steps
with checkpoints in ``work_dir/checkpoints/`` and TensorBoard summaries in
``work_dir/tensorboard/``, evaluates the validation split now and then, and writes
``work_dir/train_result.json`` (:class:`TrainResult`). Three modes
(:data:`trainer.train_config.TrainMode`):

* ``scratch``: every weight from random initialisation (no checkpoint).
* ``finetune``: restore a pretrained checkpoint (e.g. slim's ``inception_v3.ckpt``) except
  :attr:`NetworkSpec.checkpoint_exclusions`, then TF-Slim's two-stage flowers recipe: stage 1
  trains only the new heads (``stage1_steps``), stage 2 trains ``trainable_scopes`` (default:
  every layer) at ``learning_rate * stage2_lr_factor``.
* ``bottleneck`` (default when a checkpoint is given): see :mod:`trainer.bottleneck`; computes the
  pre-logits once per image and augmentation, caches them on disk, trains the final layer only.

``resume=True`` continues a scratch/finetune run from the latest checkpoint in the work folder.

The run's settings and outputs are :mod:`trainer.train_config`; what the modes share (split,
class weights, session, optimizer, result file) is :mod:`trainer.train_common`.

Small, short runs need a faster batch-norm moving average than TF-Slim's 0.9997 (tuned for
hundreds of thousands of steps): after a few hundred steps those averages would still be near
their initial values and inference (which uses them) would be wrong. Hence ``batch_norm_decay``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from shared.logs import Progress, kv
from trainer.bottleneck import train_bottleneck
from trainer.data import split_input
from trainer.nets import get_network
from trainer.train_common import class_weights, make_optimizer, prepare_split, session_config, write_result
from trainer.train_config import CHECKPOINT_DIR, TENSORBOARD_DIR, HistoryPoint, TrainConfig, TrainResult

# The names a caller needs for a run, importable from here (tests/benchmarks use them so).
__all__ = ["TrainConfig", "TrainResult", "prepare_split", "session_config", "train"]

log = logging.getLogger(__name__)


def _scope_variables(scopes: tuple[str, ...] | None) -> list[Any]:
    """Trainable variables inside ``scopes`` (all of them for ``None``)."""
    import tensorflow as tf

    from trainer.restore import in_scopes

    variables = tf.compat.v1.trainable_variables()
    if scopes is None:
        return list(variables)
    chosen = [v for v in variables if in_scopes(v.op.name, scopes)]
    if not chosen:
        raise ValueError(
            f"no trainable variable in scopes {list(scopes)}; scopes look like "
            "InceptionV3/Logits or InceptionV3/Mixed_7c"
        )
    return chosen


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.network`` on ``config.data_dir``; see the module docstring for the outputs.

    Raises:
        DatasetError: the data set cannot be used (the message says why).
        CheckpointError: the pretrained checkpoint is missing or does not fit the network.
        ValueError: a class is missing from the training split, the image size is too small, or
            ``trainable_scopes`` match nothing.
    """
    if config.mode == "bottleneck":
        return train_bottleneck(config)
    import tensorflow as tf

    from trainer.restore import resolve_checkpoint, restore_saver

    spec = get_network(config.network)
    spec.check_image_size(config.image_size)
    config.work_dir.mkdir(parents=True, exist_ok=True)
    split = prepare_split(config)
    weights = class_weights(split, config.class_weighting)
    n_classes = len(split.labels)
    ckpt_dir = config.work_dir / CHECKPOINT_DIR
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    pretrained = resolve_checkpoint(config.checkpoint) if config.checkpoint else None
    latest = tf.train.latest_checkpoint(str(ckpt_dir)) if config.resume else None

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(config.seed)
        train_ds = split_input(
            split, "train", config.image_size, config.batch_size, training=True, seed=config.seed
        )
        images, labels = tf.compat.v1.data.make_one_shot_iterator(train_ds).get_next()
        logits, end_points = spec.build(
            images,
            n_classes,
            is_training=True,
            depth_multiplier=config.depth_multiplier,
            weight_decay=config.weight_decay,
            batch_norm_decay=config.batch_norm_decay,
        )
        onehot = tf.one_hot(labels, n_classes)
        example_weights = tf.gather(tf.constant(weights), labels)
        tf.compat.v1.losses.softmax_cross_entropy(
            onehot, logits, weights=example_weights, label_smoothing=config.label_smoothing
        )
        if "AuxLogits" in end_points:
            tf.compat.v1.losses.softmax_cross_entropy(
                onehot,
                end_points["AuxLogits"],
                weights=0.4 * example_weights,
                label_smoothing=config.label_smoothing,
            )
        total_loss = tf.compat.v1.losses.get_total_loss()
        accuracy = tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32)
        )
        global_step = tf.compat.v1.train.get_or_create_global_step()
        restorer = restore_saver(pretrained, config.exclusions) if pretrained else None
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            if config.mode == "finetune":
                # One gradient graph for both stages (building it twice doubled the set-up time).
                head_vars = _scope_variables(spec.logits_scopes)
                body_vars = _scope_variables(config.trainable_scopes)
                union = head_vars + [v for v in body_vars if v not in head_vars]
                grads = dict(zip(union, tf.gradients(total_loss, union), strict=True))
                head_op = make_optimizer(config.optimizer, config.learning_rate).apply_gradients(
                    [(grads[v], v) for v in head_vars], global_step=global_step
                )
                body_op = make_optimizer(
                    config.optimizer, config.learning_rate * config.stage2_lr_factor
                ).apply_gradients([(grads[v], v) for v in body_vars], global_step=global_step)
            else:
                head_op = body_op = make_optimizer(config.optimizer, config.learning_rate).minimize(
                    total_loss, global_step=global_step
                )
        tf.compat.v1.summary.scalar("loss", total_loss)
        tf.compat.v1.summary.scalar("accuracy", accuracy)
        summaries = tf.compat.v1.summary.merge_all()
        val_summary_value = tf.compat.v1.placeholder(tf.float32, [], name="val_accuracy_value")
        val_summary = tf.compat.v1.summary.scalar("val_accuracy", val_summary_value)

        val_iter = None
        if split.val:
            val_ds = split_input(split, "val", config.image_size, config.batch_size, training=False)
            val_iter = tf.compat.v1.data.make_initializable_iterator(val_ds)
            val_images, val_labels = val_iter.get_next()
            val_logits, _ = spec.build(
                val_images,
                n_classes,
                is_training=False,
                inference=True,
                depth_multiplier=config.depth_multiplier,
                reuse=True,
                weight_decay=config.weight_decay,
                batch_norm_decay=config.batch_norm_decay,
            )
            val_correct = tf.reduce_sum(
                tf.cast(tf.equal(tf.argmax(val_logits, 1, output_type=tf.int32), val_labels), tf.int32)
            )
        saver = tf.compat.v1.train.Saver(max_to_keep=3, save_relative_paths=True)
        init = tf.compat.v1.global_variables_initializer()
    graph.finalize()

    def validate(sess: Any) -> float | None:
        if val_iter is None:
            return None
        sess.run(val_iter.initializer)
        correct = 0
        while True:
            try:
                correct += int(sess.run(val_correct))
            except tf.errors.OutOfRangeError:
                break
        return correct / len(split.val)

    history: list[HistoryPoint] = []
    started = time.monotonic()
    ckpt_prefix = str(ckpt_dir / "model.ckpt")
    checkpoint_path = latest or ""
    val_acc: float | None = None
    with graph.as_default():
        writer = tf.compat.v1.summary.FileWriter(str(config.work_dir / TENSORBOARD_DIR), graph=graph)
    log.info(
        kv(
            "train_start",
            network=spec.name,
            mode=config.mode,
            image_size=config.image_size,
            depth_multiplier=config.depth_multiplier,
            steps=config.steps,
            batch=config.batch_size,
            train=len(split.train),
            val=len(split.val),
            pretrained=pretrained or "none",
            resume_from=latest or "none",
            class_weights=",".join(f"{w:.3f}" for w in weights),
        )
    )
    with tf.compat.v1.Session(graph=graph, config=session_config(config.threads)) as sess:
        sess.run(init)
        if latest:
            saver.restore(sess, latest)
        elif restorer is not None and pretrained is not None:
            restorer.restore(sess, pretrained)
        first = int(sess.run(global_step)) + 1
        with Progress(max(config.steps - first + 1, 0), "train", log, unit="step") as progress:
            for step in range(first, config.steps + 1):
                op = head_op if step <= config.head_steps else body_op
                _, loss_v, acc_v, summary = sess.run([op, total_loss, accuracy, summaries])
                if not np.isfinite(loss_v):
                    raise FloatingPointError(
                        f"training diverged at step {step} (loss {loss_v}); lower --learning-rate"
                    )
                writer.add_summary(summary, step)
                point_val = None
                if config.eval_every and step % config.eval_every == 0 and step != config.steps:
                    point_val = validate(sess)
                if step == config.steps:
                    point_val = val_acc = validate(sess)
                if point_val is not None:
                    writer.add_summary(sess.run(val_summary, {val_summary_value: point_val}), step)
                history.append(
                    HistoryPoint(step=step, loss=float(loss_v), accuracy=float(acc_v), val_accuracy=point_val)
                )
                shown = {"loss": f"{loss_v:.4f}", "acc": f"{acc_v:.3f}"}
                if point_val is not None:
                    shown["val_acc"] = f"{point_val:.3f}"
                progress.update(1, **shown)
                if step % config.checkpoint_every == 0 or step == config.steps:
                    checkpoint_path = saver.save(sess, ckpt_prefix, global_step=step, write_meta_graph=False)
    writer.close()
    if not checkpoint_path:
        raise ValueError(
            f"no checkpoint written: {config.work_dir} already holds step {first - 1} "
            f">= steps {config.steps}; raise --steps to resume further"
        )
    return write_result(
        config,
        split,
        checkpoint_path=checkpoint_path,
        history=history,
        val_accuracy=val_acc,
        elapsed_s=time.monotonic() - started,
    )
