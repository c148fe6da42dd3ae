"""Fit and calibrate the out-of-distribution statistics of an exported model (``export/ood.npz``).

What is fitted on what (never an image on both sides):

* **fit**: the pre-logits features of the **training** split, each image once as it is (no
  augmentation), up to :data:`MAX_FIT_IMAGES` spread evenly over the sorted split; one mean per
  label and a shared PCA-regularised covariance (:func:`shared.ood.fit_ood`).
* **threshold**: the conformal ``1 - target_flag_rate`` quantile of the **validation** split's
  scores (:func:`shared.ood.calibrate`), so that at most 1 % of new in-distribution images are
  flagged (``flag_rate_bound``: 1 % from 99 validation images on, ``1 / (n + 1)`` below).
  Validation, not test: the test split stays the untouched judge of everything the bundle ships,
  the threshold included.
* **check**: the share of the **test** split above the threshold (``test_flag_rate`` with its
  Wilson interval), an estimate of the false-flag rate on new images from the same source that
  no step has seen.

Features come from the exported **FP32 IR** at f32 inference precision (what agents compute,
through the same ``crop_and_resize``), not from TensorFlow; the export's parity check already holds
the IR's features against the frozen graph's.

Writes ``export/ood.npz`` (the statistics) and ``export/ood.json`` (:class:`OodFitReport`:
the manifest's ``ood`` section and the figures). A validation split of fewer than
:data:`shared.ood.MIN_CALIBRATION_IMAGES` images cannot set a threshold: the model is then
exported without the flag (as with fewer than :data:`shared.ood.MIN_FIT_IMAGES` training images),
and a warning says so.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.cells.spec import OodSpec
from shared.logs import Progress, kv
from shared.ood import (
    MIN_CALIBRATION_IMAGES,
    MIN_FIT_IMAGES,
    OodModel,
    calibrate,
    fit_ood,
    flag_bound,
    flag_rate,
)
from shared.preprocessing import ImageDecodeError, crop_and_resize, decode_image
from trainer.data import encoded_images
from trainer.dataset import Sample, Split
from trainer.export import IR_FP32, IrRunner
from trainer.freeze import FEATURES_NAME
from trainer.stats import wilson_interval

log = logging.getLogger(__name__)

OOD_STATS_FILE = "ood.npz"
OOD_REPORT_FILE = "ood.json"
MAX_FIT_IMAGES = 4000
TARGET_FLAG_RATE = 0.01


class OodFitReport(BaseModel):
    """``export/ood.json``: what the bundle's ``ood`` section says, and how it was measured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spec: OodSpec
    fit_images: int = Field(title="training images the statistics were fitted on")
    components: int = Field(title="principal directions kept")
    flag_rate_bound: float = Field(title="guaranteed bound on the flag rate of new in-distribution images")
    test_images: int = Field(title="test images the flag rate was checked on")
    test_flag_rate: float | None = Field(title="share of the test split above the threshold")
    test_flag_rate_ci95: list[float] | None = Field(title="Wilson 95 % interval of test_flag_rate")
    skipped_images: int = Field(0, title="images that could not be decoded (logged)")

    def for_manifest(self) -> dict[str, Any]:
        """The figures for ``manifest.metrics["ood"]`` (the section itself goes to ``manifest.ood``)."""
        return self.model_dump(mode="json", exclude={"spec"})


def sample_features(
    runner: IrRunner, split: Split, samples: list[Sample], image_size: int, what: str
) -> tuple[np.ndarray, list[Sample], int]:
    """Features ``[n, d]`` of ``samples`` (agents' decode + crop + resize, then the IR), the
    samples they belong to (source order), and how many images failed to decode (logged, skipped)."""
    rows: list[np.ndarray] = []
    kept: list[Sample] = []
    failed = 0
    with Progress(len(samples), f"ood-{what}", log, unit="img") as progress:
        for sample, data, _ in encoded_images(split, samples):
            try:
                crop = crop_and_resize(decode_image(data, sample.path), image_size)
                rows.append(runner.predict_with_features(crop)[1])
                kept.append(sample)
            except (ImageDecodeError, ValueError) as exc:
                failed += 1
                log.warning(kv("ood_image_skipped", image=sample.path, part=what, error=exc))
            progress.update()
    features = np.stack(rows) if rows else np.zeros((0, runner.feature_dim), np.float32)
    return features, kept, failed


def _spread(samples: list[Sample], count: int) -> list[Sample]:
    ordered = sorted(samples, key=lambda s: s.sha256)
    stride = max(1, len(ordered) // max(count, 1))
    return ordered[::stride][:count]


def clear_ood(export_dir: Path) -> None:
    """Remove a previous export's statistics: stale ones must never ride along with a new IR."""
    for name in (OOD_STATS_FILE, OOD_REPORT_FILE):
        (export_dir / name).unlink(missing_ok=True)


def fit_ood_step(
    export_dir: Path,
    split: Split,
    ir_xml: Path,
    image_size: int,
    *,
    target_flag_rate: float = TARGET_FLAG_RATE,
    max_fit_images: int = MAX_FIT_IMAGES,
) -> OodFitReport | None:
    """Fit on training features, calibrate on validation, check on test; write ood.npz + ood.json.

    Returns:
        the report, or None when the training or validation split is too small (warned).

    Raises:
        shared.ood.OodError: too few decodable images, or non-finite features.
        ValueError: the IR has no ``features`` output.
    """
    clear_ood(export_dir)
    if len(split.val) < MIN_CALIBRATION_IMAGES or len(split.train) < MIN_FIT_IMAGES:
        log.warning(
            kv(
                "ood_not_calibrated",
                training_images=len(split.train),
                validation_images=len(split.val),
                needed=f"{MIN_FIT_IMAGES} training, {MIN_CALIBRATION_IMAGES} validation",
                effect="the bundle has no unfamiliar flag; use a larger data set",
            )
        )
        return None
    runner = IrRunner(ir_xml, inference_precision="f32")
    if runner.feature_dim == 0:
        raise ValueError(f"{ir_xml} has no {FEATURES_NAME!r} output; export the model again")
    train, fitted, bad_train = sample_features(
        runner, split, _spread(split.train, max_fit_images), image_size, "fit"
    )
    model = fit_ood(train, [s.label_index for s in fitted])
    val, _, bad_val = sample_features(runner, split, split.val, image_size, "calibrate")
    threshold = calibrate(model, val, target_flag_rate)
    test, _, bad_test = sample_features(runner, split, split.test, image_size, "check")
    test_flags = model.score(test) > threshold if len(test) else np.zeros(0, bool)
    interval = wilson_interval(int(test_flags.sum()), len(test_flags))
    model.save(export_dir / OOD_STATS_FILE)
    report = OodFitReport(
        spec=OodSpec(
            stats_file=OOD_STATS_FILE,
            feature_output=FEATURES_NAME,
            feature_dim=model.feature_dim,
            threshold=threshold,
            target_flag_rate=target_flag_rate,
            calibration_images=len(val),
            held_out_flag_rate=flag_rate(model.score(val), threshold),
        ),
        fit_images=len(train),
        components=int(model.components.shape[0]),
        flag_rate_bound=round(flag_bound(len(val), target_flag_rate), 6),
        test_images=len(test),
        test_flag_rate=float(test_flags.mean()) if len(test) else None,
        test_flag_rate_ci95=[round(v, 6) for v in interval] if interval else None,
        skipped_images=bad_train + bad_val + bad_test,
    )
    (export_dir / OOD_REPORT_FILE).write_text(report.model_dump_json(indent=2))
    log.info(
        kv(
            "ood_fitted",
            fit_images=report.fit_images,
            components=report.components,
            threshold=f"{threshold:.4g}",
            calibration_images=len(val),
            flag_rate_bound=report.flag_rate_bound,
            test_flag_rate=report.test_flag_rate,
        )
    )
    return report


def probe_images(test_crops: list[np.ndarray], size: int, count: int = 8) -> list[np.ndarray]:
    """Inputs no smear model should take for a cell: uniform noise, checkerboards and inverted
    test crops, ``count`` of each (uint8 BGR ``[size, size, 3]``, seeded)."""
    rng = np.random.default_rng(20_240_601)
    noise = [rng.integers(0, 256, (size, size, 3), np.uint8) for _ in range(count)]
    yy, xx = np.mgrid[0:size, 0:size]
    boards = []
    for k in range(count):
        mask = (((yy // (2 + k) + xx // (2 + k)) % 2) * 255).astype(np.uint8)
        boards.append(np.dstack([mask, 255 - mask, mask]))
    inverted = [255 - crop for crop in test_crops[:count]]
    return noise + boards + inverted


def compare_flag(
    export_dir: Path, other_xml: Path, report: OodFitReport, test_crops: list[np.ndarray], what: str
) -> dict[str, float]:
    """How the flag calibrated on the FP32 IR's features (``export_dir``'s IR and statistics) works
    on another IR (e.g. INT8): the share of the test crops and of :func:`probe_images` flagged by
    each IR at the shipped threshold.

    Returns:
        ``test_flag_rate_<what>``, ``probe_flag_rate_fp32``, ``probe_flag_rate_<what>``.
    """
    stats = OodModel.load(export_dir / report.spec.stats_file, report.spec)
    threshold = report.spec.threshold
    size = test_crops[0].shape[0] if test_crops else 0
    probes = probe_images(test_crops, size)
    out: dict[str, float] = {}
    for name, xml in (("fp32", export_dir / IR_FP32), (what, other_xml)):
        runner = IrRunner(xml, inference_precision="f32")
        feats = [runner.predict_with_features(c)[1] for c in probes]
        out[f"probe_flag_rate_{name}"] = flag_rate(stats.score(np.stack(feats)), threshold)
        if name == what and test_crops:
            feats = [runner.predict_with_features(c)[1] for c in test_crops]
            out[f"test_flag_rate_{name}"] = flag_rate(stats.score(np.stack(feats)), threshold)
    return out


def load_ood_report(export_dir: Path) -> OodFitReport | None:
    """``export/ood.json`` when the export calibrated the flag, else None."""
    path = export_dir / OOD_REPORT_FILE
    if not path.is_file():
        return None
    return OodFitReport.model_validate(json.loads(path.read_text()))
