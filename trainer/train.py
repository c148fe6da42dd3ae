"""Training: a TF-Slim network on a class-per-folder data set, in a TF 1.x graph on the CPU.

:func:`train` scans and splits the data (``work_dir/split.json``), trains for ``steps`` steps
with checkpoints in ``work_dir/checkpoints/`` and TensorBoard summaries in
``work_dir/tensorboard/``, evaluates the validation split now and then, and writes
``work_dir/train_result.json``. Three modes (:data:`TrainMode`):

* ``scratch``: every weight from random initialisation (no checkpoint).
* ``finetune``: restore a pretrained checkpoint (e.g. slim's ``inception_v3.ckpt``) except
  :attr:`NetworkSpec.checkpoint_exclusions`, then TF-Slim's two-stage flowers recipe: stage 1
  trains only the new heads (``stage1_steps``), stage 2 trains ``trainable_scopes`` (default:
  every layer) at ``learning_rate * stage2_lr_factor``.
* ``bottleneck`` (default when a checkpoint is given): see :mod:`trainer.bottleneck`; computes the
  pre-logits once per image and augmentation, caches them on disk, trains the final layer only.

``resume=True`` continues a scratch/finetune run from the latest checkpoint in the work folder.

Small, short runs need a faster batch-norm moving average than TF-Slim's 0.9997 (tuned for
hundreds of thousands of steps): after a few hundred steps those averages would still be near
their initial values and inference (which uses them) would be wrong. Hence ``batch_norm_decay``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.logs import Progress, kv
from trainer.data import Split, scan_dataset, split_dataset, split_input
from trainer.nets import get_network

log = logging.getLogger(__name__)

TrainMode = Literal["scratch", "finetune", "bottleneck"]
TENSORBOARD_DIR = "tensorboard"
SPLIT_FILE = "split.json"
RESULT_FILE = "train_result.json"
CHECKPOINT_DIR = "checkpoints"


class TrainConfig(BaseModel):
    """Everything one training run depends on; recorded in the bundle's manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="training run")

    data_dir: Path = Field(
        title="import folder (`leukonet trainer import`: its split and TFRecords) or a "
        "class-per-folder image set (one sub-folder per label)"
    )
    work_dir: Path = Field(title="folder for the split, checkpoints and results")
    network: str = Field("inception_v3", title="network family (see trainer.nets)")
    mode: TrainMode = Field(
        "scratch", title="training mode (default: bottleneck with a checkpoint, else scratch)"
    )
    checkpoint: Path | None = Field(
        None, title="pretrained checkpoint prefix or folder (finetune, bottleneck)"
    )
    checkpoint_exclusions: tuple[str, ...] | None = Field(
        None, title="scopes not restored from the checkpoint (default: the network's logits heads)"
    )
    trainable_scopes: tuple[str, ...] | None = Field(
        None, title="finetune stage 2: scopes trained (default: every trainable variable)"
    )
    stage1_steps: int | None = Field(
        None, ge=0, title="finetune: steps training only the heads (default steps/2)"
    )
    stage2_lr_factor: float = Field(0.1, gt=0.0, le=1.0, title="finetune stage 2 learning-rate factor")
    augmentations: int = Field(4, ge=1, le=64, title="bottleneck: augmented copies per training image")
    resume: bool = Field(False, title="continue from the latest checkpoint in work_dir/checkpoints")
    image_size: int = Field(299, ge=75, le=1024, title="square network input size in pixels")
    depth_multiplier: float = Field(1.0, gt=0.0, le=2.0, title="Inception channel width multiplier")
    steps: int = Field(1000, ge=1, le=10_000_000, title="training steps")
    batch_size: int = Field(16, ge=1, le=1024, title="images per step")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, title="initial learning rate")
    optimizer: Literal["adam", "rmsprop", "momentum"] = Field("adam", title="optimizer")
    weight_decay: float = Field(4e-5, ge=0.0, title="L2 weight decay")
    batch_norm_decay: float = Field(0.9, gt=0.0, lt=1.0, title="batch-norm moving-average decay")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, title="label smoothing")
    class_weighting: Literal["none", "balanced"] = Field(
        "balanced", title="weight each example by n / (classes * n_class) to offset imbalance"
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, title="share of each class for validation")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, title="share of each class for the test split")
    seed: int = Field(0, ge=0, title="seed of the split, initialisation and augmentation")
    checkpoint_every: int = Field(200, ge=1, title="steps between checkpoints")
    eval_every: int = Field(100, ge=0, title="steps between validation passes (0: at the end only)")
    threads: int = Field(0, ge=0, le=256, title="TensorFlow intra-op threads (0: one per core)")

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") in (None, "auto"):
            data = {**data, "mode": "bottleneck" if data.get("checkpoint") else "scratch"}
        return data

    @model_validator(mode="after")
    def _mode_needs_checkpoint(self) -> TrainConfig:
        if self.mode in ("finetune", "bottleneck") and self.checkpoint is None:
            raise ValueError(
                f"mode {self.mode} needs a pretrained checkpoint (--checkpoint, e.g. the slim "
                "inception_v3.ckpt); use mode scratch to train without one"
            )
        if self.mode == "scratch" and self.checkpoint is not None:
            raise ValueError("mode scratch ignores --checkpoint; choose finetune or bottleneck to use it")
        if self.stage1_steps is not None and self.stage1_steps > self.steps:
            raise ValueError(f"stage1_steps {self.stage1_steps} exceeds steps {self.steps}")
        return self

    @field_validator("network")
    @classmethod
    def _known_network(cls, v: str) -> str:
        get_network(v)
        return v

    @property
    def exclusions(self) -> tuple[str, ...]:
        """Scopes a checkpoint restore skips."""
        if self.checkpoint_exclusions is not None:
            return self.checkpoint_exclusions
        return get_network(self.network).checkpoint_exclusions

    @property
    def head_steps(self) -> int:
        """Finetune stage 1 length (steps training only the heads)."""
        return self.stage1_steps if self.stage1_steps is not None else self.steps // 2

    def for_manifest(self) -> dict[str, Any]:
        """The run's settings without machine-local paths (the checkpoint by its file name only)."""
        data = self.model_dump(mode="json", exclude={"data_dir", "work_dir", "threads", "checkpoint"})
        data["checkpoint"] = self.checkpoint.name if self.checkpoint else None
        return data


class HistoryPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    loss: float = Field(title="total loss of the step's batch (incl. regularisation)")
    accuracy: float = Field(title="training-batch accuracy")
    val_accuracy: float | None = Field(None, title="validation accuracy at this step")


class TrainResult(BaseModel):
    """What :func:`train` produced; also ``work_dir/train_result.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    checkpoint_path: str = Field(title="checkpoint prefix (…/model.ckpt-<step>)")
    labels: list[str]
    history: list[HistoryPoint]
    val_accuracy: float | None
    steps: int
    elapsed_s: float
    dataset_fingerprint: str
    split_path: str
    config: TrainConfig
    phases_s: dict[str, float] = Field(
        default_factory=dict, title="seconds per phase, graph building excluded (bottleneck: compute, layer)"
    )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        """Read ``train_result.json``.

        Raises:
            FileNotFoundError: no training result there (run ``leukonet trainer train`` first).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no training result; run `leukonet trainer train` first")
        return cls.model_validate_json(p.read_text())


def class_weights(split: Split, weighting: str) -> np.ndarray:
    """Per-class loss weights ``n / (classes * n_class)`` over the training split, or all ones."""
    n_classes = len(split.labels)
    if weighting == "none":
        return np.ones(n_classes, np.float32)
    counts = np.bincount([s.label_index for s in split.train], minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        missing = [split.labels[i] for i in np.flatnonzero(counts == 0)]
        raise ValueError(f"training split has no image of {missing}; add images of every class")
    return (counts.sum() / (n_classes * counts)).astype(np.float32)


def session_config(threads: int) -> Any:
    import tensorflow as tf

    return tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=min(threads, 2) if threads else 0
    )


def _optimizer(name: str, learning_rate: float) -> Any:
    import tensorflow as tf

    if name == "adam":
        return tf.compat.v1.train.AdamOptimizer(learning_rate)
    if name == "rmsprop":
        return tf.compat.v1.train.RMSPropOptimizer(learning_rate, decay=0.9, momentum=0.9, epsilon=1.0)
    return tf.compat.v1.train.MomentumOptimizer(learning_rate, momentum=0.9)


def prepare_split(config: TrainConfig) -> Split:
    """The run's split, saved as ``work_dir/split.json``.

    ``data_dir`` is either an import folder (``leukonet trainer import``: its split and TFRecord
    shards are used as they are, so the run trains on exactly what was imported) or a
    class-per-folder image set (scanned and split here with the config's fractions and seed).

    Raises:
        DatasetError: the data cannot be used (the message says why).
    """
    from trainer.importer import DATASET_FILE, load_import

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
        from trainer.bottleneck import train_bottleneck

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
                head_op = _optimizer(config.optimizer, config.learning_rate).apply_gradients(
                    [(grads[v], v) for v in head_vars], global_step=global_step
                )
                body_op = _optimizer(
                    config.optimizer, config.learning_rate * config.stage2_lr_factor
                ).apply_gradients([(grads[v], v) for v in body_vars], global_step=global_step)
            else:
                head_op = body_op = _optimizer(config.optimizer, config.learning_rate).minimize(
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
    elapsed = time.monotonic() - started
    result = TrainResult(
        checkpoint_path=checkpoint_path,
        labels=split.labels,
        history=history,
        val_accuracy=val_acc,
        steps=config.steps,
        elapsed_s=round(elapsed, 2),
        dataset_fingerprint=split.fingerprint,
        split_path=str(config.work_dir / SPLIT_FILE),
        config=config,
    )
    result.save(config.work_dir / RESULT_FILE)
    log.info(
        kv(
            "train_done",
            steps=config.steps,
            elapsed_s=f"{elapsed:.1f}",
            val_accuracy=val_acc if val_acc is not None else "n/a",
            checkpoint=checkpoint_path,
        )
    )
    return result
