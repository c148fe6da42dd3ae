"""INT8 post-training quantization of a real (tiny) exported IR, and the FP32 vs INT8 report.

The model is Inception V3 at 75 px with depth multiplier 0.25 and two labels, randomly initialised
(seeded), frozen and exported by the trainer's own code: the graph and the IR contract are the
real thing, only the weights are untrained. Calibration crops and labelled "test" crops are
synthetic smears cropped the agents' way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.preprocessing import crop_and_resize
from trainer.synthetic import LABELS, render_smear

IMAGE_SIZE = 75
DEPTH_MULTIPLIER = 0.25


@dataclass
class Quantized:
    fp32: Path
    int8: Path
    calibration: list[np.ndarray]
    test_crops: list[np.ndarray]
    test_labels: list[int]


def _crops(seed: int, per_class: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for i in range(2 * per_class):
        label = i % len(LABELS)
        crops.append(crop_and_resize(render_smear(rng, LABELS[label], 96), IMAGE_SIZE))
        labels.append(label)
    return crops, labels


@pytest.fixture(scope="module")
def quantized(ml_stack: None, tmp_path_factory: pytest.TempPathFactory) -> Quantized:
    import tensorflow as tf

    from trainer.export import convert_to_ir, save_irs
    from trainer.freeze import INPUT_NAME, freeze
    from trainer.int8 import IR_INT8, MIN_CALIBRATION_IMAGES, quantize_int8
    from trainer.ir_outputs import probabilities_only_ir
    from trainer.nets import get_network

    root = tmp_path_factory.mktemp("int8")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(3)
        images = tf.compat.v1.placeholder(tf.float32, [1, IMAGE_SIZE, IMAGE_SIZE, 3], name=INPUT_NAME)
        get_network("inception_v3").build(
            images, len(LABELS), is_training=False, inference=True, depth_multiplier=DEPTH_MULTIPLIER
        )
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            checkpoint = saver.save(sess, str(root / "ckpt" / "model.ckpt"))
    frozen = freeze(
        checkpoint,
        root / "model.pb",
        network="inception_v3",
        num_classes=len(LABELS),
        image_size=IMAGE_SIZE,
        depth_multiplier=DEPTH_MULTIPLIER,
    )
    fp32, _ = save_irs(convert_to_ir(frozen.path, IMAGE_SIZE), root)
    # quantize_int8 holds an IR to one output: quantize the copy without features, as the pipeline does.
    fp32 = probabilities_only_ir(fp32, root / "single" / "model.xml")
    calibration, _ = _crops(seed=1, per_class=MIN_CALIBRATION_IMAGES // 2)
    test_crops, test_labels = _crops(seed=2, per_class=6)
    int8 = quantize_int8(fp32, root / IR_INT8, calibration)
    return Quantized(fp32, int8, calibration, test_crops, test_labels)


def _op_types(xml: Path) -> set[str]:
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(xml)).get_ops()}


def test_quantized_ir_keeps_the_contract_and_is_quantized(quantized: Quantized) -> None:
    import openvino as ov

    from trainer.export import INPUT_NAME, OUTPUT_NAME, IrRunner

    assert quantized.int8.exists() and quantized.int8.with_suffix(".bin").exists()
    model = ov.Core().read_model(str(quantized.int8))
    assert [set(t.get_names()) for t in model.inputs] == [{INPUT_NAME}]
    assert [set(t.get_names()) for t in model.outputs] == [{OUTPUT_NAME}]
    assert model.input().get_element_type() == ov.Type.u8
    assert list(model.input().get_shape()) == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert "FakeQuantize" in _op_types(quantized.int8)
    assert "FakeQuantize" not in _op_types(quantized.fp32)
    # Weights are stored as int8: the .bin shrinks to about a quarter of the FP32 one.
    fp32_bytes = quantized.fp32.with_suffix(".bin").stat().st_size
    assert quantized.int8.with_suffix(".bin").stat().st_size < 0.4 * fp32_bytes

    runner = IrRunner(quantized.int8)
    for crop in quantized.test_crops[:4]:
        p = runner.predict(crop)
        assert p.shape == (len(LABELS),) and p.dtype == np.float32
        assert np.all(p >= 0) and np.all(p <= 1)
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-5)


def _fp32_top1(quantized: Quantized) -> list[int]:
    from trainer.export import IrRunner

    runner = IrRunner(quantized.fp32)
    return [int(runner.predict(c).argmax()) for c in quantized.test_crops]


def test_report_figures_on_labels_with_known_fp32_accuracy(quantized: Quantized) -> None:
    import nncf

    from trainer.int8 import MIN_CALIBRATION_IMAGES, compare_int8

    # Labels equal to the FP32 IR's own answers: FP32 accuracy is 1 by construction, so INT8
    # accuracy is exactly the top-1 agreement and the delta is agreement - 1.
    top1 = _fp32_top1(quantized)
    r = compare_int8(quantized.fp32, quantized.int8, quantized.test_crops, top1)
    n = len(top1)
    assert r.n == n
    assert r.accuracy_fp32 == 1.0
    assert 0.0 <= r.top1_agreement <= 1.0
    assert r.accuracy_int8 == pytest.approx(r.top1_agreement)
    assert r.accuracy_delta == pytest.approx(r.accuracy_int8 - r.accuracy_fp32)
    assert 0.0 <= r.mean_abs_diff <= r.max_abs_diff < 1.0
    assert (r.calibration_images, r.preset, r.nncf_version) == (
        MIN_CALIBRATION_IMAGES,
        "performance",
        nncf.__version__,
    )

    # Flip the label of 3 images: FP32 accuracy drops to exactly (n - 3) / n.
    flipped = [1 - t if i < 3 else t for i, t in enumerate(top1)]
    r2 = compare_int8(quantized.fp32, quantized.int8, quantized.test_crops, flipped)
    assert r2.accuracy_fp32 == pytest.approx((n - 3) / n)
    assert r2.accuracy_delta == pytest.approx(r2.accuracy_int8 - r2.accuracy_fp32)
    assert r2.top1_agreement == r.top1_agreement  # agreement ignores labels

    manifest = r2.as_manifest()
    assert set(manifest) == {
        "n",
        "accuracy_fp32",
        "accuracy_int8",
        "accuracy_delta",
        "top1_agreement",
        "max_abs_diff",
        "mean_abs_diff",
        "calibration_images",
        "preset",
        "nncf_version",
    }
    assert all(isinstance(v, int | float | str) for v in manifest.values())
    assert manifest["accuracy_delta"] == r2.accuracy_delta


def test_an_ir_compared_with_itself_has_no_delta(quantized: Quantized) -> None:
    from trainer.int8 import compare_int8

    r = compare_int8(quantized.int8, quantized.int8, quantized.test_crops, quantized.test_labels)
    assert (r.top1_agreement, r.max_abs_diff, r.mean_abs_diff, r.accuracy_delta) == (1.0, 0.0, 0.0, 0.0)
    assert r.accuracy_fp32 == r.accuracy_int8


def test_quantization_keeps_nncf_off_stdout_and_logs_progress(
    quantized: Quantized, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from nncf.common.logging.logger import nncf_logger

    from trainer.int8 import quantize_int8

    handlers, propagate = list(nncf_logger.handlers), nncf_logger.propagate
    with caplog.at_level(logging.INFO, logger="trainer.int8"):
        out = quantize_int8(quantized.fp32, tmp_path / "model.xml", quantized.calibration, preset="mixed")
    captured = capfd.readouterr()
    # stderr is not a TTY under pytest: NNCF's rich bar ("Statistics collection ...") is dropped.
    assert "Statistics" not in captured.out + captured.err
    assert captured.out == ""
    messages = [r.getMessage() for r in caplog.records if r.name == "trainer.int8"]
    assert any(m.startswith("progress task=int8-calibration") and "pct=100" in m for m in messages)
    assert any(m.startswith("int8-saved") for m in messages)
    # NNCF's logger is given back as it was.
    assert (nncf_logger.handlers, nncf_logger.propagate) == (handlers, propagate)
    from trainer.int8 import compare_int8

    assert compare_int8(quantized.fp32, out, quantized.test_crops, quantized.test_labels).preset == "mixed"


def test_too_few_calibration_images_are_refused(quantized: Quantized, tmp_path: Path) -> None:
    from trainer.int8 import MIN_CALIBRATION_IMAGES, quantize_int8

    with pytest.raises(ValueError, match=rf"at least {MIN_CALIBRATION_IMAGES} images, got 3.*more training"):
        quantize_int8(quantized.fp32, tmp_path / "model.xml", quantized.calibration[:3])
    assert not (tmp_path / "model.xml").exists()


def test_bad_inputs_get_clear_errors(quantized: Quantized, tmp_path: Path) -> None:
    from trainer.int8 import compare_int8, quantize_int8

    wrong_size = [np.zeros((IMAGE_SIZE + 1, IMAGE_SIZE + 1, 3), np.uint8)] * len(quantized.calibration)
    with pytest.raises(ValueError, match=r"calibration crop 0 is uint8 \[76, 76, 3\].*crop_and_resize"):
        quantize_int8(quantized.fp32, tmp_path / "a.xml", wrong_size)
    with pytest.raises(ValueError, match="unknown INT8 preset"):
        quantize_int8(quantized.fp32, tmp_path / "a.xml", quantized.calibration, preset="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="12 crops but 11 labels"):
        compare_int8(quantized.fp32, quantized.int8, quantized.test_crops, quantized.test_labels[:-1])
    with pytest.raises(ValueError, match=r"labels must be indices in \[0, 2\)"):
        compare_int8(quantized.fp32, quantized.int8, quantized.test_crops, [2] * len(quantized.test_crops))
    with pytest.raises(ValueError, match="no NNCF quantization record"):
        compare_int8(quantized.fp32, quantized.fp32, quantized.test_crops, quantized.test_labels)


def test_renamed_tensors_after_quantization_are_an_error(
    quantized: Quantized, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf
    import openvino as ov

    from trainer.int8 import Int8Error, quantize_int8

    def renaming_quantize(model: Any, *args: Any, **kwargs: Any) -> Any:
        model.output().get_tensor().set_names({"softmax"})
        return model

    monkeypatch.setattr(nncf, "quantize", renaming_quantize)
    with pytest.raises(Int8Error, match=r"output \['softmax'\]; agents need 'input' and 'probabilities'"):
        quantize_int8(quantized.fp32, tmp_path / "model.xml", quantized.calibration)
    assert not (tmp_path / "model.xml").exists()
    assert ov.Core().read_model(str(quantized.fp32)).output().get_names() == {"probabilities"}
