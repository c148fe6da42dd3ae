"""The trainer's steps over one work folder, and the whole run (split -> ... -> publish).

Each step reads what the previous ones left in ``work_dir`` and writes its own outputs, so the
CLI can run them one by one (``train``, ``evaluate``, ``export``, ``bundle``, ``publish``) or all
at once (``run``)::

    work_dir/
      split.json, train_result.json, checkpoints/     train
      eval/report.json, eval/predictions.csv          evaluate (test split)
      export/model.pb, export/ir/{fp32,fp16}/model.{xml,bin},
      export/reference.png, export/parity.json        export (freeze + IR + parity)
      export/ood.npz, export/ood.json                 export (unfamiliar flag, trainer.ood_fit)
      eval/fields.json, eval/fields.csv               bundle of a cell model (trainer.field_eval)
      bundle/<name>-<version>.zip                     bundle
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.logs import kv
from shared.ood import OodModel
from trainer.data import write_images
from trainer.dataset import Sample, Split
from trainer.evaluate import REPORT_FILE, EvaluationReport, evaluate
from trainer.export import IR_FP32, MIN_PARITY_IMAGES, PARITY_FILE, REFERENCE_IMAGE, export, load_crops
from trainer.freeze import freeze
from trainer.int8 import IR_INT8
from trainer.ir_outputs import add_features_output, probabilities_only_ir
from trainer.ood_fit import OOD_STATS_FILE, compare_flag, fit_ood_step, load_ood_report
from trainer.publish import FROZEN_GRAPH, BundleInfo, build_manifest, make_bundle, publish, source_commit
from trainer.train import train
from trainer.train_config import RESULT_FILE, CellOptions, TrainConfig, TrainResult

log = logging.getLogger(__name__)

EVAL_DIR = "eval"
EXPORT_DIR = "export"
BUNDLE_DIR = "bundle"
MAX_PARITY_IMAGES = 16
PARITY_IMAGES_DIR = "parity-images"
INT8_CALIBRATION_IMAGES = 64


def load_train_result(work_dir: str | Path) -> TrainResult:
    return TrainResult.load(Path(work_dir) / RESULT_FILE)


def evaluate_step(work_dir: str | Path, positive_label: str | None = None) -> EvaluationReport:
    """Evaluate the trained checkpoint on the test split into ``work_dir/eval``."""
    result = load_train_result(work_dir)
    return evaluate(result, Path(work_dir) / EVAL_DIR, split_name="test", positive_label=positive_label)


def parity_samples(split: Split, count: int = MAX_PARITY_IMAGES) -> list[Sample]:
    """Validation images first; topped up from test, then train, when validation has fewer than 8.

    Parity compares two implementations of one function, so any real image serves; validation
    images are preferred only because they are the ones the model was not fitted to.
    """
    chosen = list(split.val[:count])
    for pool in (split.test, split.train):
        if len(chosen) >= MIN_PARITY_IMAGES:
            break
        chosen += pool[: MIN_PARITY_IMAGES - len(chosen)]
    return chosen


def parity_images(split: Split, work_dir: Path, count: int = MAX_PARITY_IMAGES) -> list[str]:
    """Files of :func:`parity_samples`: the originals, or copies out of the TFRecords of an import."""
    samples = parity_samples(split, count)
    if split.records:
        return write_images(split, samples, work_dir / PARITY_IMAGES_DIR)
    return [s.path for s in samples]


def export_step(
    work_dir: str | Path, *, int8: bool = False, calibration_images: int = INT8_CALIBRATION_IMAGES
) -> dict[str, Any]:
    """Freeze the checkpoint and export IR FP32/FP16 with the parity check into ``work_dir/export``.

    With ``int8``, the FP32 IR is also quantized (NNCF, calibrated on up to
    ``calibration_images`` training images) to ``export/ir/int8`` and compared with FP32 on the
    test split; the figures go into ``parity.json`` under ``int8``.

    Returns:
        ``parity.json``'s content (parity figures, reference image and its probabilities, int8).
    """
    result = load_train_result(work_dir)
    cfg = result.config
    out = Path(work_dir) / EXPORT_DIR
    frozen = freeze(
        result.checkpoint_path,
        out / FROZEN_GRAPH,
        network=cfg.network,
        num_classes=len(result.labels),
        image_size=cfg.image_size,
        depth_multiplier=cfg.depth_multiplier,
    )
    split = Split.load(result.split_path)
    export(frozen.path, out, cfg.image_size, list(parity_images(split, Path(work_dir))))
    data: dict[str, Any] = json.loads((out / PARITY_FILE).read_text())
    ood = fit_ood_step(out, split, out / IR_FP32, cfg.image_size)
    data["ood"] = {**ood.for_manifest(), "threshold": ood.spec.threshold} if ood else None
    int8_dir = out / Path(IR_INT8).parent
    if int8_dir.exists():
        shutil.rmtree(int8_dir)  # a stale INT8 IR must not ride along with a new FP32 one
    if int8:
        data["int8"] = int8_step(split, Path(work_dir), cfg.image_size, calibration_images)
    (out / PARITY_FILE).write_text(json.dumps(data, indent=2))
    return data


def int8_step(split: Split, work_dir: Path, image_size: int, calibration_images: int) -> dict[str, Any]:
    """Quantize ``export/ir/fp32`` to ``export/ir/int8``; the :class:`Int8Report` figures (test split)
    and, with OOD statistics, how the unfamiliar flag fares on INT8 (:func:`trainer.ood_fit.compare_flag`).

    Calibration takes training images only (evenly spread over the sorted split, so every class
    is represented); the test split measures the accuracy delta.
    """
    from trainer.int8 import compare_int8, quantize_int8

    out = work_dir / EXPORT_DIR
    train = split.part("train")
    stride = max(1, len(train) // max(calibration_images, 1))
    calibration = train[::stride][:calibration_images]
    test = split.part("test")

    def crops(samples: list[Sample], folder: str) -> list[Any]:
        if split.records:
            return load_crops(list(write_images(split, samples, work_dir / folder)), image_size)
        return load_crops([s.path for s in samples], image_size)

    # quantize_int8 takes one-output IRs: quantize without the features, then tap them again.
    source = probabilities_only_ir(out / IR_FP32, work_dir / "int8-source" / "model.xml")
    int8_xml = quantize_int8(source, out / IR_INT8, crops(calibration, "int8-calibration"))
    shutil.rmtree(source.parent, ignore_errors=True)
    add_features_output(int8_xml, out / IR_FP32)
    test_crops = crops(test, "int8-test")
    report = compare_int8(out / IR_FP32, int8_xml, test_crops, [s.label_index for s in test])
    ood = load_ood_report(out)
    flag = compare_flag(out, int8_xml, ood, test_crops, "int8") if ood is not None else {}
    log.info(
        kv(
            "int8",
            accuracy_fp32=report.accuracy_fp32,
            accuracy_int8=report.accuracy_int8,
            delta=report.accuracy_delta,
            agreement=report.top1_agreement,
            n=report.n,
            **flag,
        )
    )
    if report.accuracy_delta < 0:
        log.warning(
            kv(
                "int8_accuracy_drop",
                delta=report.accuracy_delta,
                n=report.n,
                note="INT8 is optional; agents keep using FP32/FP16 unless told otherwise",
            )
        )
    figures: dict[str, Any] = {**report.as_manifest(), **flag}
    if flag:
        figures["ood_flag_validated"] = ood_flag_holds(flag)
        if not figures["ood_flag_validated"]:
            log.warning(
                kv(
                    "int8_unfamiliar_flag_not_validated",
                    **flag,
                    note="INT8 activations saturate at ranges calibrated on smears, so unlike inputs "
                    "look familiar; use FP32/FP16 where the unfamiliar flag matters",
                )
            )
    return figures


def ood_flag_holds(flag: dict[str, float]) -> bool:
    """Whether the FP32-calibrated flag still works on INT8: it flags at least 90 % of the probes
    FP32 flags, and at most 5 % of the test split."""
    probes_kept = flag["probe_flag_rate_int8"] >= 0.9 * flag["probe_flag_rate_fp32"]
    return probes_kept and flag["test_flag_rate_int8"] <= 0.05


def _read_json(path: Path, step: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run `leukonet trainer {step}` first")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def bundle_step(
    work_dir: str | Path,
    *,
    name: str,
    version: str,
    signing_key: str | Path,
    out_path: str | Path | None = None,
    cells: CellOptions | None = None,
) -> BundleInfo:
    """Build and sign ``work_dir/bundle/<name>-<version>.zip`` from the train, eval and export outputs.

    The export's OOD statistics (``export/ood.npz``) ride along as the manifest's ``ood`` section.
    With ``cells`` the model is bundled as a cell model: its finder and decision rule, evaluated
    on ``cells.eval_fields`` (:func:`trainer.field_eval.cells_step`) into the ``cells`` section.
    """
    work = Path(work_dir)
    result = load_train_result(work)
    if cells is not None:
        cells.check_labels(result.labels)  # before anything slow
    report = _read_json(work / EVAL_DIR / REPORT_FILE, "evaluate")
    exported = _read_json(work / EXPORT_DIR / PARITY_FILE, "export")
    ood = load_ood_report(work / EXPORT_DIR)
    test = report["metrics"]
    metrics: dict[str, Any] = {
        "split": report["split"],
        "n": test["n"],
        "accuracy": test["accuracy"],
        "sensitivity": test["sensitivity"],
        "specificity": test["specificity"],
        "precision": test["precision"],
        "f1": test["f1"],
        "positive_label": test["positive_label"],
        "confusion_matrix": test["confusion_matrix"],
        "val_accuracy": result.val_accuracy,
        "roc_auc": test.get("roc_auc"),
        "ci95": test.get("ci95", {}),
    }
    if "int8" in exported:
        metrics["int8"] = exported["int8"]
    if ood is not None:
        metrics["ood"] = ood.for_manifest()
    cells_spec = None
    if cells is not None:
        from trainer.field_eval import Unfamiliar, cells_step

        unfamiliar = None
        if ood is not None:
            stats = OodModel.load(work / EXPORT_DIR / OOD_STATS_FILE, ood.spec)
            unfamiliar = Unfamiliar(stats, ood.spec.threshold, ood.spec.field_unfamiliar_fraction)
        cells_spec = cells_step(
            cells,
            result.labels,
            work / EXPORT_DIR / IR_FP32,
            result.config.image_size,
            work / EVAL_DIR,
            unfamiliar,
        )
    training = {
        **result.config.for_manifest(),
        "elapsed_s": result.elapsed_s,
        "final_loss": result.history[-1].loss if result.history else None,
    }
    manifest = build_manifest(
        work / EXPORT_DIR,
        name=name,
        version=version,
        labels=result.labels,
        image_size=result.config.image_size,
        metrics=metrics,
        reference_probabilities=exported["reference_probabilities"],
        parity={k: float(v) for k, v in exported["parity"].items()},
        dataset_fingerprint=result.dataset_fingerprint,
        training=training,
        architecture=result.config.network,
        reference_image=REFERENCE_IMAGE,
        commit=source_commit(),
        int8_ir=IR_INT8 if "int8" in exported else None,
        ood=ood.spec if ood is not None else None,
        cells=cells_spec,
    )
    out = Path(out_path) if out_path else work / BUNDLE_DIR / f"{name}-{version}.zip"
    return make_bundle(work / EXPORT_DIR, manifest, signing_key, out)


@dataclass(frozen=True)
class RunSummary:
    bundle: str
    sha256: str
    name: str
    version: str
    labels: list[str]
    metrics: dict[str, Any]
    parity: dict[str, float]
    val_accuracy: float | None
    train_elapsed_s: float
    elapsed_s: float
    published: dict[str, Any] | None
    ood: dict[str, Any] | None = None
    cells: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def run_pipeline(
    config: TrainConfig,
    *,
    name: str,
    version: str,
    signing_key: str | Path,
    hub_url: str | None = None,
    token: str | None = None,
    positive_label: str | None = None,
    int8: bool = False,
    cells: CellOptions | None = None,
) -> RunSummary:
    """Split, train, evaluate, freeze, export (+ parity, OOD statistics, + INT8 when asked),
    bundle (a cell model with ``cells``: evaluated on its fields), and publish.

    Publishing happens when ``hub_url`` is set, as the very last step: a run that fails anywhere
    before it publishes nothing.

    The signing key and the evaluation fields are read before training starts, so a wrong path
    fails in seconds, not after the whole run.
    """
    from shared.bundle import load_private_key

    load_private_key(signing_key)
    if cells is not None and cells.eval_fields is not None:
        from trainer.fields import load_fields

        load_fields(cells.eval_fields)
    started = time.monotonic()
    result = train(config)
    if cells is not None:
        cells.check_labels(result.labels)
    report = evaluate_step(config.work_dir, positive_label)
    export_step(config.work_dir, int8=int8)
    info = bundle_step(config.work_dir, name=name, version=version, signing_key=signing_key, cells=cells)
    published = publish(info.path, hub_url, token or "") if hub_url else None
    summary = RunSummary(
        bundle=str(info.path),
        sha256=info.sha256,
        name=name,
        version=version,
        labels=result.labels,
        metrics={k: v for k, v in info.manifest.metrics.items() if k != "reference_probabilities"},
        parity=dict(info.manifest.parity),
        val_accuracy=result.val_accuracy,
        train_elapsed_s=result.elapsed_s,
        elapsed_s=round(time.monotonic() - started, 2),
        published=published,
        ood=info.manifest.ood.model_dump(mode="json") if info.manifest.ood else None,
        cells=info.manifest.cells.model_dump(mode="json") if info.manifest.cells else None,
    )
    log.info(kv("run_done", bundle=info.path, accuracy=report.metrics.accuracy, elapsed_s=summary.elapsed_s))
    return summary
