"""Export a frozen graph to OpenVINO IR (FP32 + FP16) with the preprocessing inside, and prove parity.

The IR contract (what agents feed and read):

* input ``input``: u8 ``[1, S, S, 3]``, layout NHWC, colour order BGR, i.e. exactly what
  ``shared.preprocessing.crop_and_resize`` returns for an OpenCV-decoded image. Inside, the IR
  converts to f32, swaps BGR -> RGB and computes ``(x - 127.5) / 127.5`` (PrePostProcessor).
* output 0 ``probabilities``: f32 ``[1, num_labels]`` softmax (first, as before the features
  existed: agents read it by name, and one-output tools take the first);
* output 1 ``features``: f32 ``[1, d]`` pre-logits features, scored by :mod:`shared.ood`.

Parity: on real validation images the frozen TF graph (fed ``to_network_input`` of the OpenCV
crop) and each IR (fed the uint8 crop) must agree within :data:`FP32_TOLERANCE` and
:data:`FP16_TOLERANCE` (max abs difference of probabilities); otherwise :class:`ParityError`.
The FP32 IR's features must match the graph's within :data:`FEATURES_FP32_TOLERANCE`, relative
to the largest feature of the image (``max_rel_diff_features_fp32``); FP16's figure is recorded.
Parity is measured on the CPU device at f32 inference precision, so the figures describe the IR
itself, not a device's reduced-precision execution. Where this CPU has bf16 kernels (AMX /
AVX512-BF16) the FP32 IR is also run at bf16, and the figure is recorded with
:data:`BF16_TOLERANCE` (``max_abs_diff_bf16``): that is what lets an agent run ``precision: BF16``
knowingly. A bf16 gap above the tolerance does not fail the export; it is recorded as
``rejected_max_abs_diff_bf16`` and agents refuse BF16 for that model.

``reference.png`` (one validation image, decoded and stored losslessly at its original size) and
the IR FP32 probabilities on its ``crop_and_resize`` go into the bundle: agents decode it, crop and
resize it like any image, and compare, as a smoke test after loading a model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from shared.logs import Progress, kv
from shared.preprocessing import (
    INPUT_MEAN,
    INPUT_SCALE,
    crop_and_resize,
    decode_image,
    to_network_input,
)
from trainer.freeze import FEATURES_NAME, INPUT_NAME, OUTPUT_NAME, FrozenModel
from trainer.ir_outputs import ordered_outputs

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
# bfloat16 keeps 8 significand bits (FP16 11) and on the CPU rounds activations too, where the FP16
# IR only rounds weights; 3x FP16's tolerance leaves room for that on confident crops, while a broken
# kernel or a wrong IR moves probabilities by far more.
BF16_TOLERANCE = 3e-2
# Features are unbounded (ReLU outputs), so their gap is relative to the image's largest feature;
# the FP32 IR only reorders float sums, which moves them by about 1e-6 of that.
FEATURES_FP32_TOLERANCE = 1e-3
MIN_PARITY_IMAGES = 8
IR_FP32 = "ir/fp32/model.xml"
IR_FP16 = "ir/fp16/model.xml"
REFERENCE_IMAGE = "reference.png"
PARITY_FILE = "parity.json"


class ParityError(RuntimeError):
    """The IR does not compute what the frozen graph computes (beyond tolerance)."""


@dataclass(frozen=True)
class ParityReport:
    images: int
    max_abs_diff_fp32: float
    max_abs_diff_fp16: float
    mean_abs_diff_fp32: float
    mean_abs_diff_fp16: float
    top1_agreement_fp16: float
    #: FP32 IR at bf16 on this CPU; None where the CPU has no bf16 kernels.
    max_abs_diff_bf16: float | None = None
    mean_abs_diff_bf16: float | None = None
    top1_agreement_bf16: float | None = None
    #: features output, relative to the image's largest feature; None for an IR without features.
    max_rel_diff_features_fp32: float | None = None
    max_rel_diff_features_fp16: float | None = None

    @property
    def bf16_validated(self) -> bool:
        return self.max_abs_diff_bf16 is not None and self.max_abs_diff_bf16 <= BF16_TOLERANCE

    def as_manifest(self) -> dict[str, float]:
        out = {
            "images": float(self.images),
            "max_abs_diff_fp32": self.max_abs_diff_fp32,
            "max_abs_diff_fp16": self.max_abs_diff_fp16,
            "mean_abs_diff_fp32": self.mean_abs_diff_fp32,
            "mean_abs_diff_fp16": self.mean_abs_diff_fp16,
            "top1_agreement_fp16": self.top1_agreement_fp16,
            "tolerance_fp32": FP32_TOLERANCE,
            "tolerance_fp16": FP16_TOLERANCE,
        }
        if self.max_rel_diff_features_fp32 is not None and self.max_rel_diff_features_fp16 is not None:
            out["max_rel_diff_features_fp32"] = self.max_rel_diff_features_fp32
            out["max_rel_diff_features_fp16"] = self.max_rel_diff_features_fp16
            out["tolerance_features_fp32"] = FEATURES_FP32_TOLERANCE
        if self.max_abs_diff_bf16 is None:
            return out
        if not self.bf16_validated:
            return {**out, "rejected_max_abs_diff_bf16": self.max_abs_diff_bf16}
        assert self.mean_abs_diff_bf16 is not None and self.top1_agreement_bf16 is not None
        return {
            **out,
            "max_abs_diff_bf16": self.max_abs_diff_bf16,
            "mean_abs_diff_bf16": self.mean_abs_diff_bf16,
            "top1_agreement_bf16": self.top1_agreement_bf16,
            "tolerance_bf16": BF16_TOLERANCE,
        }


@dataclass(frozen=True)
class ExportResult:
    """Files written under ``out_dir`` (relative paths) and the parity figures."""

    out_dir: Path
    ir_fp32: str
    ir_fp16: str
    reference_image: str
    reference_probabilities: list[float]
    parity: ParityReport
    feature_dim: int = 0
    files: list[str] = field(default_factory=list)


def convert_to_ir(pb_path: str | Path, image_size: int) -> Any:
    """Convert the frozen graph and embed the preprocessing; returns an ``openvino.Model``.

    The model's input is renamed ``input`` (OpenVINO calls the TF placeholder ``input:0``) and its
    outputs ``probabilities`` (first) and, when the graph has it, ``features`` (second), so
    ``compiled.input("input")`` / ``compiled.output("probabilities")`` work.
    """
    import openvino as ov
    from openvino.preprocess import ColorFormat, PrePostProcessor

    model = ov.convert_model(
        str(pb_path), input=[(f"{INPUT_NAME}:0", [1, image_size, image_size, 3], ov.Type.f32)]
    )
    model = ordered_outputs(model)
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(
        ColorFormat.BGR
    )
    ppp.input().model().set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).convert_color(ColorFormat.RGB).mean(
        INPUT_MEAN
    ).scale(INPUT_SCALE)
    for index in range(len(model.outputs)):
        ppp.output(index).tensor().set_element_type(ov.Type.f32)
    model = ppp.build()
    model.input().get_tensor().set_names({INPUT_NAME})
    for out, name in zip(model.outputs, (OUTPUT_NAME, FEATURES_NAME), strict=False):
        out.get_tensor().set_names({name})
    model.set_friendly_name("leukonet")
    return model


def save_irs(model: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``ir/fp32/model.xml`` (FP32 weights) and ``ir/fp16/model.xml`` (FP16 weights)."""
    import openvino as ov

    out = Path(out_dir)
    fp32, fp16 = out / IR_FP32, out / IR_FP16
    fp32.parent.mkdir(parents=True, exist_ok=True)
    fp16.parent.mkdir(parents=True, exist_ok=True)
    # save_model compresses to FP16 by default: the FP32 IR has to ask not to.
    ov.save_model(model, str(fp32), compress_to_fp16=False)
    ov.save_model(model, str(fp16), compress_to_fp16=True)
    return fp32, fp16


def cpu_has_bf16() -> bool:
    """True where OpenVINO's CPU plugin has bf16 kernels (AMX / AVX512-BF16)."""
    import openvino as ov

    return "BF16" in [str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")]


class IrRunner:
    """An IR compiled on the CPU at an explicit precision (f32 unless asked):
    ``predict(crop uint8 BGR [S, S, 3]) -> [N]``; :meth:`predict_with_features` also returns the
    ``features`` output of IRs that have one (:attr:`feature_dim` > 0).

    The hint is always set: the CPU plugin's own default is bf16 on CPUs that have it.
    """

    def __init__(self, xml_path: str | Path, device: str = "CPU", inference_precision: str = "f32") -> None:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": inference_precision} if device == "CPU" else {}
        self._compiled = core.compile_model(str(xml_path), device, config)
        self._request = self._compiled.create_infer_request()
        self._output = self._compiled.output(OUTPUT_NAME)
        self.input_shape = [int(d) for d in self._compiled.input(INPUT_NAME).shape]
        feats = [o for o in self._compiled.outputs if FEATURES_NAME in o.get_names()]
        self._features = feats[0] if feats else None
        self.feature_dim = int(feats[0].shape[1]) if feats else 0

    def _infer(self, crop_bgr: np.ndarray) -> Any:
        if list(crop_bgr.shape) != self.input_shape[1:] or crop_bgr.dtype != np.uint8:
            raise ValueError(
                f"IR input wants uint8 {self.input_shape[1:]}, got {crop_bgr.dtype} {list(crop_bgr.shape)}"
            )
        return self._request.infer({INPUT_NAME: crop_bgr[None]})

    def predict(self, crop_bgr: np.ndarray) -> np.ndarray:
        return np.asarray(self._infer(crop_bgr)[self._output])[0].copy()

    def predict_with_features(self, crop_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities [N], features [d])`` of one crop.

        Raises:
            ValueError: wrong crop, or an IR without a ``features`` output (exported before it existed).
        """
        if self._features is None:
            raise ValueError(
                f"this IR has no {FEATURES_NAME!r} output; export the model again (`leukonet trainer export`)"
            )
        result = self._infer(crop_bgr)
        return np.asarray(result[self._output])[0].copy(), np.asarray(result[self._features])[0].copy()


def parity_check(
    pb_path: str | Path,
    fp32_xml: str | Path,
    fp16_xml: str | Path,
    crops: list[np.ndarray],
    *,
    fp32_tolerance: float = FP32_TOLERANCE,
    fp16_tolerance: float = FP16_TOLERANCE,
) -> tuple[ParityReport, list[np.ndarray]]:
    """Compare the frozen graph with both IRs on ``crops`` (uint8 BGR ``[S, S, 3]``).

    Returns:
        the report and the IR FP32 probabilities per crop.

    Raises:
        ValueError: fewer than :data:`MIN_PARITY_IMAGES` crops.
        ParityError: a difference above tolerance (the message gives the figures).
    """
    if len(crops) < MIN_PARITY_IMAGES:
        raise ValueError(
            f"parity needs at least {MIN_PARITY_IMAGES} images, got {len(crops)}; "
            "use a larger validation split"
        )
    ir32, ir16 = IrRunner(fp32_xml), IrRunner(fp16_xml)
    irbf = IrRunner(fp32_xml, inference_precision="bf16") if cpu_has_bf16() else None
    d32: list[float] = []
    d16: list[float] = []
    dbf: list[float] = []
    f32: list[float] = []
    f16: list[float] = []
    agree = agree_bf = 0
    fp32_probs: list[np.ndarray] = []
    with_features = ir32.feature_dim > 0 and ir16.feature_dim > 0
    with FrozenModel(pb_path) as frozen, Progress(len(crops), "parity", log, unit="img") as progress:
        for crop in crops:
            x = to_network_input(crop)[None]
            if with_features:
                ref, ref_feats = frozen.predict_with_features(x)
                p32, feats32 = ir32.predict_with_features(crop)
                p16, feats16 = ir16.predict_with_features(crop)
                scale = max(float(np.abs(ref_feats).max()), 1e-6)
                f32.append(float(np.abs(feats32 - ref_feats).max()) / scale)
                f16.append(float(np.abs(feats16 - ref_feats).max()) / scale)
            else:
                ref = frozen.predict(x)
                p32, p16 = ir32.predict(crop), ir16.predict(crop)
            d32.append(float(np.abs(ref - p32).max()))
            d16.append(float(np.abs(ref - p16).max()))
            agree += int(ref.argmax() == p16.argmax())
            if irbf is not None:
                pbf = irbf.predict(crop)
                dbf.append(float(np.abs(ref - pbf).max()))
                agree_bf += int(ref.argmax() == pbf.argmax())
            fp32_probs.append(p32)
            progress.update()
    report = ParityReport(
        images=len(crops),
        max_abs_diff_fp32=max(d32),
        max_abs_diff_fp16=max(d16),
        mean_abs_diff_fp32=float(np.mean(d32)),
        mean_abs_diff_fp16=float(np.mean(d16)),
        top1_agreement_fp16=agree / len(crops),
        max_abs_diff_bf16=max(dbf) if dbf else None,
        mean_abs_diff_bf16=float(np.mean(dbf)) if dbf else None,
        top1_agreement_bf16=agree_bf / len(crops) if dbf else None,
        max_rel_diff_features_fp32=max(f32) if f32 else None,
        max_rel_diff_features_fp16=max(f16) if f16 else None,
    )
    log.info(
        kv(
            "parity",
            images=report.images,
            max_fp32=f"{report.max_abs_diff_fp32:.2e}",
            max_fp16=f"{report.max_abs_diff_fp16:.2e}",
            max_bf16=f"{max(dbf):.2e}" if dbf else "no bf16 on this CPU",
            features_fp32=f"{max(f32):.2e}" if f32 else "no features output",
        )
    )
    if dbf and not report.bf16_validated:
        log.warning(
            kv(
                "bf16_not_validated",
                max_bf16=f"{max(dbf):.3g}",
                tolerance=BF16_TOLERANCE,
                effect="agents refuse precision BF16 for this model",
            )
        )
    if report.max_abs_diff_fp32 > fp32_tolerance or report.max_abs_diff_fp16 > fp16_tolerance:
        raise ParityError(
            f"OpenVINO IR differs from the frozen TF graph: FP32 max |diff| {report.max_abs_diff_fp32:.3g} "
            f"(tolerance {fp32_tolerance:g}), FP16 max |diff| {report.max_abs_diff_fp16:.3g} "
            f"(tolerance {fp16_tolerance:g}) over {report.images} images; do not ship this model "
            "(check the OpenVINO version and the preprocessing in trainer/export.py)"
        )
    if f32 and max(f32) > FEATURES_FP32_TOLERANCE:
        raise ParityError(
            f"OpenVINO FP32 IR features differ from the frozen TF graph's by {max(f32):.3g} of the largest "
            f"feature (tolerance {FEATURES_FP32_TOLERANCE:g}) over {report.images} images; the unfamiliar "
            "flag would not mean what the trainer calibrated: do not ship this model"
        )
    return report, fp32_probs


def load_crops(image_paths: list[str | Path], image_size: int) -> list[np.ndarray]:
    """Decode files with OpenCV and crop + resize them the agents' way (uint8 BGR)."""
    return [crop_and_resize(decode_image(Path(p).read_bytes(), str(p)), image_size) for p in image_paths]


def export(
    pb_path: str | Path, out_dir: str | Path, image_size: int, parity_images: list[str | Path]
) -> ExportResult:
    """Convert ``pb_path`` to IR FP32 + FP16 under ``out_dir``, check parity, write the reference image.

    ``out_dir`` receives ``ir/fp32/model.{xml,bin}``, ``ir/fp16/model.{xml,bin}``,
    ``reference.png`` and ``parity.json``.

    Raises:
        ParityError, ValueError: see :func:`parity_check`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = convert_to_ir(pb_path, image_size)
    feature_dim = int(model.outputs[1].get_partial_shape()[1].get_length()) if len(model.outputs) > 1 else 0
    fp32, fp16 = save_irs(model, out)
    originals = [decode_image(Path(p).read_bytes(), str(p)) for p in parity_images]
    crops = [crop_and_resize(image, image_size) for image in originals]
    report, fp32_probs = parity_check(pb_path, fp32, fp16, crops)
    # The reference is the crop the model is most sure about: a smoke test wants a clear answer.
    ref_index = int(np.argmax([p.max() for p in fp32_probs]))
    if not cv2.imwrite(str(out / REFERENCE_IMAGE), originals[ref_index]):
        raise OSError(f"{out / REFERENCE_IMAGE}: OpenCV could not write the reference image")
    reference_probs = [float(v) for v in fp32_probs[ref_index]]
    (out / PARITY_FILE).write_text(
        json.dumps(
            {
                "parity": report.as_manifest(),
                "reference_image": REFERENCE_IMAGE,
                "reference_source": str(parity_images[ref_index]),
                "reference_probabilities": reference_probs,
                "features": {"output": FEATURES_NAME, "dim": feature_dim} if feature_dim else None,
            },
            indent=2,
        )
    )
    files = [IR_FP32, IR_FP32[:-4] + ".bin", IR_FP16, IR_FP16[:-4] + ".bin", REFERENCE_IMAGE]
    return ExportResult(
        out_dir=out,
        ir_fp32=IR_FP32,
        ir_fp16=IR_FP16,
        reference_image=REFERENCE_IMAGE,
        reference_probabilities=reference_probs,
        parity=report,
        feature_dim=feature_dim,
        files=files,
    )
