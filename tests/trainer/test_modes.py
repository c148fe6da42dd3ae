"""Checkpoint restore with exclusions, and the finetune / bottleneck / resume training modes.

No ImageNet checkpoint can be downloaded in tests, so a small 5-class Inception V3 (75 px, depth
multiplier 0.35) is trained two steps and saved; it plays the pretrained checkpoint that is
fine-tuned to the two classes of a generated data set.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from trainer.synthetic import generate_dataset
from trainer.train_config import TrainConfig

SIZE = 75
DEPTH = 0.35
HEADS = ("InceptionV3/Logits", "InceptionV3/AuxLogits")


@pytest.fixture(scope="module")
def pretrained(ml_stack: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 5-class checkpoint whose every variable is moved off its initial value by random noise.

    Values are assigned rather than trained: building Inception's gradient graph costs tens of
    seconds on two cores and adds nothing to what the restore tests check.
    """
    import tensorflow as tf

    from trainer.nets import get_network

    out = tmp_path_factory.mktemp("pretrained")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(1)
        get_network("inception_v3").build(
            tf.zeros([1, SIZE, SIZE, 3]), 5, is_training=True, depth_multiplier=DEPTH
        )
        tf.compat.v1.train.get_or_create_global_step()
        randomise = [
            v.assign_add(tf.random.uniform(v.shape, -0.02, 0.02, dtype=v.dtype.base_dtype))
            for v in tf.compat.v1.global_variables()
            if v.dtype.base_dtype == tf.float32
        ]
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(randomise)
            return str(saver.save(sess, str(out / "five.ckpt"), global_step=7, write_meta_graph=False))


@pytest.fixture(scope="module")
def smears(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("smears")
    generate_dataset(root, per_class=10, image_size=96, seed=4)
    return root


def _config(smears: Path, work: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "data_dir": smears,
        "work_dir": work,
        "image_size": SIZE,
        "depth_multiplier": DEPTH,
        "batch_size": 4,
        "eval_every": 0,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "seed": 0,
    }
    return TrainConfig(**{**base, **kw})


def _checkpoint_values(path: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def test_five_to_two_classes_restores_everything_but_the_heads(pretrained: str) -> None:
    import tensorflow as tf
    import tf_slim as slim

    from trainer.nets import get_network
    from trainer.restore import restore_saver

    saved = _checkpoint_values(pretrained)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.zeros([1, SIZE, SIZE, 3])
        get_network("inception_v3").build(images, 2, is_training=True, depth_multiplier=DEPTH)
        model_vars = slim.get_model_variables()
        saver = restore_saver(pretrained, HEADS)
        init = tf.compat.v1.global_variables_initializer()
    with tf.compat.v1.Session(graph=graph) as sess:
        sess.run(init)
        fresh = sess.run({v.op.name: v for v in model_vars})
        saver.restore(sess, pretrained)
        after = sess.run({v.op.name: v for v in model_vars})
    excluded = {n for n in after if n.startswith(HEADS)}
    assert excluded == {"InceptionV3/Logits/Conv2d_1c_1x1/weights", "InceptionV3/Logits/Conv2d_1c_1x1/biases"}
    assert len(after) - len(excluded) > 300
    for name, value in after.items():
        if name in excluded:
            assert saved[name].shape[-1] == 5 and value.shape[-1] == 2
            np.testing.assert_array_equal(value, fresh[name])  # left as initialised
        else:
            np.testing.assert_array_equal(value, saved[name], err_msg=name)  # restored exactly
    # The global step is in the checkpoint but is no model variable: not a restore target.
    assert "global_step" in saved and "global_step" not in after


def test_restore_refuses_a_checkpoint_of_another_width(pretrained: str) -> None:
    import tensorflow as tf

    from trainer.nets import get_network
    from trainer.restore import CheckpointError, resolve_checkpoint, restore_saver

    with tf.Graph().as_default():
        get_network("inception_v3").build(
            tf.zeros([1, SIZE, SIZE, 3]), 2, is_training=False, depth_multiplier=0.5
        )
        with pytest.raises(CheckpointError, match="depth-multiplier"):
            restore_saver(pretrained, HEADS)
    with pytest.raises(CheckpointError, match="inception_v3.ckpt"):
        resolve_checkpoint(pretrained + "-nope")


def test_mode_defaults_and_requirements(tmp_path: Path, pretrained: str) -> None:
    assert _config(tmp_path, tmp_path).mode == "scratch"
    assert _config(tmp_path, tmp_path, checkpoint=pretrained).mode == "bottleneck"
    with pytest.raises(ValidationError, match="needs a pretrained checkpoint"):
        _config(tmp_path, tmp_path, mode="finetune")
    with pytest.raises(ValidationError, match="mode scratch ignores"):
        _config(tmp_path, tmp_path, mode="scratch", checkpoint=pretrained)
    manifest = _config(tmp_path, tmp_path, mode="finetune", checkpoint=pretrained).for_manifest()
    assert manifest["checkpoint"] == Path(pretrained).name and manifest["mode"] == "finetune"


def test_finetune_two_stages_then_resume(smears: Path, tmp_path: Path, pretrained: str) -> None:
    """Stage 1 trains the new heads only, stage 2 the ``trainable_scopes`` too, and a resumed run
    goes on from the last checkpoint in stage 2.

    Stage 2 trains the last block (``InceptionV3/Mixed_7c``) rather than every layer (the default):
    the stages and the resume work the same for any scopes, while gradients down to the first layer,
    built by each of the two runs, cost the suite most of a minute on two cores. A variable outside
    the scopes (the first layer) must then stay the checkpoint's through both stages.
    """
    from trainer.train import train

    saved = _checkpoint_values(pretrained)
    first_layer = "InceptionV3/Conv2d_1a_3x3/weights"
    body = "InceptionV3/Mixed_7c/Branch_0/Conv2d_0a_1x1/weights"
    head = "InceptionV3/Logits/Conv2d_1c_1x1/weights"
    finetune: dict[str, Any] = {
        "mode": "finetune",
        "checkpoint": pretrained,
        "stage1_steps": 2,
        "trainable_scopes": ("InceptionV3/Mixed_7c",),
    }
    # Stage 1 only: the body's weights stay the checkpoint's, the new head moves.
    first = train(_config(smears, tmp_path, steps=2, **finetune))
    stage1 = _checkpoint_values(first.checkpoint_path)
    np.testing.assert_array_equal(stage1[body], saved[body])
    np.testing.assert_array_equal(stage1[first_layer], saved[first_layer])
    assert stage1[head].shape[-1] == 2 and first.checkpoint_path.endswith("model.ckpt-2")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    # Resume to step 3: stage 2 trains the body too, from where stage 1 stopped.
    second = train(_config(smears, tmp_path, steps=3, resume=True, **finetune))
    assert [h.step for h in second.history] == [3] and second.checkpoint_path.endswith("model.ckpt-3")
    stage2 = _checkpoint_values(second.checkpoint_path)
    assert not np.array_equal(stage2[body], saved[body])
    np.testing.assert_array_equal(stage2[first_layer], saved[first_layer])  # outside the scopes
    assert second.val_accuracy is not None


def test_bottleneck_caches_prelogits_and_writes_a_full_checkpoint(
    smears: Path, tmp_path: Path, pretrained: str
) -> None:
    from trainer.bottleneck import BottleneckCache, cache_tag, compute_bottlenecks
    from trainer.dataset import Split
    from trainer.evaluate import predict_checkpoint
    from trainer.train import train

    config = _config(smears, tmp_path, checkpoint=pretrained, steps=30, augmentations=2, learning_rate=1e-2)
    result = train(config)
    split = Split.load(result.split_path)
    cached = list((tmp_path / "bottlenecks").rglob("*.npy"))
    assert len(cached) == 2 * len(split.train) + len(split.val)
    dims = {np.load(f).shape for f in cached}
    assert (
        len(dims) == 1
        and next(iter(dims))[0]
        == _checkpoint_values(pretrained)["InceptionV3/Logits/Conv2d_1c_1x1/weights"].shape[2]
    )
    # The full checkpoint = pretrained body + trained layer; it reproduces the layer's val accuracy.
    values = _checkpoint_values(result.checkpoint_path)
    saved = _checkpoint_values(pretrained)
    np.testing.assert_array_equal(
        values["InceptionV3/Mixed_7c/Branch_0/Conv2d_0a_1x1/weights"],
        saved["InceptionV3/Mixed_7c/Branch_0/Conv2d_0a_1x1/weights"],
    )
    probs = predict_checkpoint(
        result.checkpoint_path, split, "val", network="inception_v3", image_size=SIZE, depth_multiplier=DEPTH
    )
    acc = float(np.mean(probs.argmax(1) == [s.label_index for s in split.val]))
    assert result.val_accuracy == pytest.approx(acc)
    # Another run reuses every cached vector: nothing left to compute, no file touched.
    mtimes = {f: f.stat().st_mtime_ns for f in cached}
    cache = BottleneckCache(cached[0].parent)
    assert cache.folder.name == cache_tag(config, pretrained)
    jobs = [(s, c) for s in split.train for c in range(2)] + [(s, 0) for s in split.val]
    assert all(cache.has(s.sha256, c) for s, c in jobs)
    compute_bottlenecks(config, pretrained, split, jobs, cache)
    assert {f: f.stat().st_mtime_ns for f in cached} == mtimes


@pytest.fixture(scope="module")
def idb2_import(ml_stack: None, smears: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated smears renamed the ALL-IDB2 way (``ImNNN_L.tif``) and imported to TFRecords."""
    import cv2

    from trainer.importer import import_dataset

    root = tmp_path_factory.mktemp("idb2")
    tifs = root / "ALL_IDB2" / "img"
    tifs.mkdir(parents=True)
    for i, jpg in enumerate(sorted(smears.rglob("*.jpg"))):
        digit = 1 if jpg.parent.name == "ALL" else 0
        assert cv2.imwrite(str(tifs / f"Im{i + 1:03d}_{digit}.tif"), cv2.imread(str(jpg)))
    import_dataset(root / "ALL_IDB2", root / "records", val_fraction=0.2, test_fraction=0.2, seed=2, shards=2)
    return root / "records"


def test_scratch_trains_and_evaluates_from_imported_tiff_records(idb2_import: Path, tmp_path: Path) -> None:
    import cv2

    from trainer.dataset import Split
    from trainer.evaluate import evaluate, predict_checkpoint
    from trainer.importer import load_import
    from trainer.pipeline import parity_images
    from trainer.train import train

    imported, import_split = load_import(idb2_import)
    result = train(_config(idb2_import, tmp_path, steps=3))
    split = Split.load(result.split_path)
    assert split.records["train"] == [str(idb2_import / n) for n in imported.shards["train"]]
    assert split.fingerprint == imported.fingerprint == result.dataset_fingerprint
    assert [s.sha256 for s in split.test] == [s.sha256 for s in import_split.test]
    assert len(result.history) == 3 and result.val_accuracy is not None
    report = evaluate(result, tmp_path / "eval")
    assert report.metrics.n == len(split.test) and Path(report.predictions_path).is_file()
    # The records hold the TIFFs' pixels (re-encoded as PNG): the files the parity check gets
    # decode to the originals, and the checkpoint predicts the same from records and from them.
    files = parity_images(split, tmp_path)
    originals = {s.sha256: s.path for s in split.part("val") + split.part("test")}
    for f in files:
        assert Path(f).suffix == ".png"
        np.testing.assert_array_equal(cv2.imread(f), cv2.imread(originals[Path(f).stem]))
    # The test images are among them (validation first, topped up from test), and evaluate() above
    # predicted the test split from the records: its CSV holds each image's probabilities.
    assert len(files) == len(split.val) + len(split.test)
    with open(report.predictions_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["sha256"] for r in rows] == [s.sha256 for s in split.test]
    from_records = np.array([[float(r[f"p_{label}"]) for label in split.labels] for r in rows])
    as_files = Split(
        labels=split.labels,
        train=[],
        val=[],
        skipped=[],
        fingerprint="",
        seed=0,
        test=[replace(s, path=f) for s, f in zip(split.test, files[len(split.val) :], strict=True)],
    )
    from_files = predict_checkpoint(
        result.checkpoint_path,
        as_files,
        "test",
        network="inception_v3",
        image_size=SIZE,
        depth_multiplier=DEPTH,
    )
    np.testing.assert_allclose(from_records, from_files, atol=1e-6 + 5e-7)  # the CSV keeps 6 decimals


def test_bottleneck_reads_imported_records_once_per_copy(
    idb2_import: Path, tmp_path: Path, pretrained: str
) -> None:
    from trainer.dataset import Split
    from trainer.train import train

    result = train(_config(idb2_import, tmp_path, checkpoint=pretrained, steps=5, augmentations=2))
    split = Split.load(result.split_path)
    assert split.records and result.config.mode == "bottleneck"
    cached = {f.name for f in (tmp_path / "bottlenecks").rglob("*.npy")}
    assert cached == {f"{s.sha256}-{c}.npy" for s in split.train for c in range(2)} | {
        f"{s.sha256}-0.npy" for s in split.val
    }
