"""The unfamiliar flag of a trained model: its IR output, its statistics, and the flag put to work.

The model is ``test_pipeline.py``'s (one training run for the trainer tests): synthetic
single-cell images at 256 px, Inception V3 at 96 px and depth multiplier 0.35, 300 steps from
scratch, 45 % of the images held out for validation so the 1 % threshold is set on 360 images.
Its IR has the probabilities first and the pre-logits features second; its bundle carries
``ood.npz`` and the manifest's ``ood`` section.

What a small scratch-trained network's features notice: structure (noise, checkerboards, random
shapes, inverted images, a whole field squeezed to 96 px), not colour alone (a hue shift or a
grey image keeps a cell's shapes, and this network never learnt colour). The figures each kind
reached are printed; the assertions hold the structural kinds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from shared.bundle import Manifest, load_public_key, verify_bundle
from shared.ood import OodModel, calibrate, fit_ood, flag_rate
from shared.preprocessing import crop_and_resize, decode_image, to_network_input
from tests.trainer.test_pipeline import IMAGE_SIZE, Trained, trained_model
from trainer.dataset import Split

FRESH_PER_CLASS = 200


# The trainer tests' one training run (test_pipeline.trained_model) happens in whichever test of
# these modules comes first: minutes on two busy cores, past the suite's 5-minute default.
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class CellRun:
    """The shared run, its bundle verified and unpacked."""

    work: Path
    fields: Path
    keys: Path
    summary: dict[str, Any]
    manifest: Manifest
    unpacked: Path


def unpacked_run(tmp_path_factory: pytest.TempPathFactory) -> CellRun:
    trained: Trained = trained_model(tmp_path_factory)
    unpacked = tmp_path_factory.mktemp("unpacked") / "bundle"
    key = load_public_key(trained.keys / "signing.pub.pem")
    manifest = verify_bundle(trained.summary["bundle"], key, dest_dir=unpacked)
    return CellRun(
        work=trained.work,
        fields=trained.fields,
        keys=trained.keys,
        summary=trained.summary,
        manifest=manifest,
        unpacked=unpacked,
    )


@pytest.fixture(scope="module")
def run(ml_stack: None, tmp_path_factory: pytest.TempPathFactory) -> CellRun:
    return unpacked_run(tmp_path_factory)


def _features(xml: Path, images: list[np.ndarray]) -> np.ndarray:
    from trainer.export import IrRunner

    runner = IrRunner(xml, inference_precision="f32")
    return np.stack([runner.predict_with_features(crop_and_resize(i, IMAGE_SIZE))[1] for i in images])


def _decode(paths: list[str]) -> list[np.ndarray]:
    return [decode_image(Path(p).read_bytes(), p) for p in paths]


def test_the_ir_gives_probabilities_first_and_features_second(run: CellRun) -> None:
    import openvino as ov

    assert run.manifest.output.name == "probabilities"
    assert run.manifest.ood is not None and run.manifest.ood.feature_output == "features"
    for variant in ("ir_fp32", "ir_fp16"):
        model = ov.Core().read_model(str(run.unpacked / run.manifest.artifacts[variant]))
        probs, features = model.outputs
        assert probs.get_names() == {"probabilities"} and list(probs.get_shape()) == [1, 2]
        assert features.get_names() == {"features"}
        assert list(features.get_shape()) == [1, run.manifest.ood.feature_dim] == [1, 715]


def test_the_ir_features_match_the_frozen_graph_at_f32(run: CellRun) -> None:
    from trainer.export import FEATURES_FP32_TOLERANCE, IrRunner
    from trainer.freeze import FrozenModel

    split = Split.load(run.work / "split.json")
    runner = IrRunner(run.unpacked / run.manifest.artifacts["ir_fp32"], inference_precision="f32")
    with FrozenModel(run.unpacked / "model.pb") as frozen:
        for sample in split.test[:6]:
            crop = crop_and_resize(decode_image(Path(sample.path).read_bytes()), IMAGE_SIZE)
            ref_probs, ref_feats = frozen.predict_with_features(to_network_input(crop)[None])
            probs, feats = runner.predict_with_features(crop)
            assert np.abs(probs - ref_probs).max() <= 1e-4
            assert np.abs(feats - ref_feats).max() <= FEATURES_FP32_TOLERANCE * np.abs(ref_feats).max()
    parity = run.manifest.parity
    assert 0 <= parity["max_rel_diff_features_fp32"] <= parity["tolerance_features_fp32"]
    assert parity["max_rel_diff_features_fp16"] > parity["max_rel_diff_features_fp32"]


def test_statistics_fit_on_training_images_and_threshold_set_on_validation(run: CellRun) -> None:
    ood = run.manifest.ood
    assert ood is not None and ood.stats_file == "ood.npz" and "ood.npz" in run.manifest.files
    split = Split.load(run.work / "split.json")
    assert not {s.sha256 for s in split.train} & {s.sha256 for s in split.val}
    xml = run.unpacked / run.manifest.artifacts["ir_fp32"]
    train = _features(xml, _decode([s.path for s in split.train]))
    val = _features(xml, _decode([s.path for s in split.val]))
    # Recomputed from the bundle's own IR: the same fit and the same conformal threshold.
    refit = fit_ood(train, [s.label_index for s in split.train])
    shipped = OodModel.load(run.unpacked / ood.stats_file, ood)
    assert np.allclose(shipped.score(val), refit.score(val), rtol=1e-4)
    assert ood.threshold == pytest.approx(calibrate(refit, val, ood.target_flag_rate), rel=1e-4)
    assert ood.calibration_images == len(split.val) >= 300 and ood.target_flag_rate == 0.01
    assert ood.held_out_flag_rate == pytest.approx(flag_rate(shipped.score(val), ood.threshold))
    figures = run.manifest.metrics["ood"]
    assert figures["fit_images"] == len(split.train) and figures["test_images"] == len(split.test)
    assert figures["flag_rate_bound"] <= 0.01
    assert run.summary["ood"]["threshold"] == ood.threshold


def _hue(image: np.ndarray, shift: int) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _shapes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((256, 256, 3), rng.integers(0, 256, 3), np.uint8)
    for _ in range(8):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, 256, 2))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), int(rng.integers(10, 60)), colour, -1)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, 256, 2))
            cv2.rectangle(image, (x, y), (x2, y2), colour, -1)
    return image


def _checker(k: int) -> np.ndarray:
    side = 8 + 4 * k
    yy, xx = np.mgrid[0:256, 0:256]
    mask = (((yy // side + xx // side) % 2) * 255).astype(np.uint8)
    return np.dstack([mask, 255 - mask, mask])


def test_unlike_images_are_flagged_while_new_held_out_ones_are_not(
    run: CellRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trainer.synthetic import generate_dataset

    ood = run.manifest.ood
    assert ood is not None
    stats = OodModel.load(run.unpacked / ood.stats_file, ood)
    xml = run.unpacked / run.manifest.artifacts["ir_fp32"]
    # New images from the same source, written and decoded like the training set (JPEG 95).
    fresh = generate_dataset(tmp_path / "fresh", FRESH_PER_CLASS, 256, seed=99)
    fresh_images = _decode([str(p) for paths in fresh.files.values() for p in paths])
    held_out = flag_rate(stats.score(_features(xml, fresh_images)), ood.threshold)
    base = fresh_images[:20]
    kinds = {
        "noise": [np.random.default_rng([6, k]).integers(0, 256, (256, 256, 3), np.uint8) for k in range(20)],
        "checkerboard": [_checker(k) for k in range(20)],
        "random_shapes": [_shapes(k) for k in range(20)],
        "inverted": [255 - image for image in base],
        "whole_field": _decode([str(p) for p in sorted(run.fields.glob("*.jpg"))]),
        "hue_shift_90": [_hue(image, 90) for image in base],
        "grey": [cv2.cvtColor(cv2.cvtColor(i, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) for i in base],
    }
    rates = {
        name: flag_rate(stats.score(_features(xml, images)), ood.threshold) for name, images in kinds.items()
    }
    with capsys.disabled():
        print(
            f"\nunfamiliar flag: held-out in-distribution {held_out:.3f} of {len(fresh_images)}; "
            + str(rates)
        )
    assert len(fresh_images) == 400 and held_out < 0.02
    assert rates["noise"] == 1.0 and rates["checkerboard"] == 1.0
    assert min(rates["random_shapes"], rates["inverted"], rates["whole_field"]) >= 0.7


def test_too_small_a_split_exports_without_the_flag_and_drops_stale_statistics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from trainer.dataset import Sample
    from trainer.ood_fit import OOD_REPORT_FILE, OOD_STATS_FILE, fit_ood_step, load_ood_report

    def samples(n: int, part: str) -> list[Sample]:
        return [Sample(f"{part}{i}.jpg", "ALL", 0, f"{part}{i:062d}") for i in range(n)]

    stale = [tmp_path / OOD_STATS_FILE, tmp_path / OOD_REPORT_FILE]
    for path in stale:
        path.write_text("from an earlier export")
    split = Split(["ALL", "normal"], samples(40, "t"), samples(9, "v"), samples(5, "s"), [], "f", 0)
    with caplog.at_level("WARNING"):
        got = fit_ood_step(tmp_path, split, tmp_path / "absent.xml", IMAGE_SIZE)
    assert got is None and load_ood_report(tmp_path) is None
    assert not any(path.exists() for path in stale)
    assert "ood_not_calibrated" in caplog.text and "validation_images=9" in caplog.text
