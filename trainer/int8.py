"""Optional INT8 post-training quantization of the FP32 IR (NNCF), with its accuracy delta recorded.

INT8 is an *extra* artefact, never a replacement: CPU, iGPU and NPU agents (current OpenVINO) can run
it faster and smaller; the NCS2 (``MYRIAD``, OpenVINO 2022.3) runs the FP16 IR only, so FP32 and
FP16 stay in every bundle whether or not INT8 is made.

How it is made (:func:`quantize_int8`): NNCF post-training quantization of the exported FP32 IR
(``trainer.export``'s ``ir/fp32/model.xml``): FakeQuantize operations are inserted in front of the
convolutions and matrix products, their ranges set from statistics over calibration images, and the
weights stored as int8. The preprocessing inside the IR (u8 BGR NHWC in, colour swap and scaling)
is kept, so the quantized IR has the same contract as the others: input ``input`` u8
``[1, S, S, 3]`` BGR (what ``shared.preprocessing.crop_and_resize`` returns), output
``probabilities`` f32 ``[1, num_labels]``. NNCF needs no labels for this.

Calibration images come from the **training** split (never the test split), cropped and resized
the agents' way; at least :data:`MIN_CALIBRATION_IMAGES` of them, and all are used
(``subset_size = len(crops)``). NNCF writes its version, preset and subset size into the IR's
``rt_info``; :func:`compare_int8` reads them back, so a report describes the IR it measured.

How it is judged (:func:`compare_int8`): both IRs run on the labelled **test** split and
:class:`Int8Report` records accuracy of each, ``accuracy_delta = accuracy_int8 - accuracy_fp32``
(negative: INT8 is worse), top-1 agreement and probability differences. This module records the
delta and never fails on it: whether a drop is acceptable is the caller's policy. The figures are
measured on the CPU device (:class:`trainer.export.IrRunner`); another device's INT8 kernels may
differ slightly.

NNCF's own output: rich progress bars printed to *stdout* (off a terminal, one final line per
bar) and log records on its own stdout handler. The trainer's stdout carries its JSON summary, so
during quantization NNCF's stdout is discarded and its log records go through the ``nncf`` logger
into this process's logging (INFO on a terminal, WARNING and above when stderr is not a TTY).
Progress is reported with :class:`shared.logs.Progress` instead (a bar on a terminal, log lines
otherwise). Redirecting stdout is process-wide for the duration of :func:`quantize_int8`: do not
run it beside threads that print results to stdout.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.logs import Progress, kv
from trainer.export import INPUT_NAME, OUTPUT_NAME, IrRunner

log = logging.getLogger(__name__)

MIN_CALIBRATION_IMAGES = 8
IR_INT8 = "ir/int8/model.xml"
PRESETS: tuple[str, ...] = ("performance", "mixed")
Preset = Literal["performance", "mixed"]
_RT_INFO = ("nncf", "quantization")


class Int8Error(RuntimeError):
    """NNCF produced an IR that breaks the agents' contract (names, element type or shape)."""


class Int8Report(BaseModel):
    """FP32 vs INT8 IR on one labelled split (the test split); what the manifest records."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(ge=1, title="labelled images compared")
    accuracy_fp32: float = Field(ge=0, le=1, title="top-1 accuracy of the FP32 IR")
    accuracy_int8: float = Field(ge=0, le=1, title="top-1 accuracy of the INT8 IR")
    accuracy_delta: float = Field(ge=-1, le=1, title="accuracy_int8 - accuracy_fp32 (negative: INT8 worse)")
    top1_agreement: float = Field(ge=0, le=1, title="share of images where both IRs pick the same label")
    max_abs_diff: float = Field(ge=0, title="largest |p_int8 - p_fp32| over images and labels")
    mean_abs_diff: float = Field(ge=0, title="mean over images of the per-image max |p_int8 - p_fp32|")
    calibration_images: int = Field(ge=1, title="images NNCF calibrated on (training split)")
    preset: str = Field(title="NNCF quantization preset")
    nncf_version: str = Field(title="NNCF version that quantized the IR")

    def as_manifest(self) -> dict[str, float | str | int]:
        """The figures as flat JSON-ready values, for the bundle manifest's metrics."""
        return dict(self.model_dump())


def quantize_int8(
    fp32_xml: str | Path,
    out_xml: str | Path,
    calibration_crops: list[np.ndarray],
    *,
    preset: Preset = "performance",
) -> Path:
    """Quantize the FP32 IR ``fp32_xml`` to INT8 and save it as ``out_xml`` (+ ``.bin``).

    Args:
        fp32_xml: the exported FP32 IR (``ir/fp32/model.xml``).
        out_xml: where to write the INT8 IR (conventionally ``ir/int8/model.xml``, :data:`IR_INT8`);
            parent folders are created.
        calibration_crops: uint8 BGR ``[S, S, 3]`` crops of **training** images, as
            ``shared.preprocessing.crop_and_resize`` returns them; all of them are used.
        preset: ``"performance"`` (symmetric weights and activations, fastest) or ``"mixed"``
            (asymmetric activations; can recover accuracy on skewed activations).

    Returns:
        the path of the written ``.xml``.

    Raises:
        ValueError: fewer than :data:`MIN_CALIBRATION_IMAGES` crops, a crop of the wrong shape or
            dtype, an unknown preset, or ``fp32_xml`` without the ``input`` (u8) / ``probabilities``
            contract of ``trainer.export``.
        Int8Error: the quantized model no longer has the ``input``/``probabilities`` contract.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown INT8 preset {preset!r}; use one of {', '.join(PRESETS)}")
    if len(calibration_crops) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images, got "
            f"{len(calibration_crops)}; pass more training images (a larger training split) "
            "or skip INT8"
        )
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    contract = _contract(model, str(fp32_xml), ValueError)
    if contract[1] != "u8":
        raise ValueError(f"{fp32_xml} takes {contract[1]} input; quantize the u8 IR trainer.export writes")
    want = contract[0][1:]
    for i, crop in enumerate(calibration_crops):
        if crop.dtype != np.uint8 or list(crop.shape) != want:
            raise ValueError(
                f"calibration crop {i} is {crop.dtype} {list(crop.shape)}, the IR wants uint8 "
                f"{want}; crop and resize with shared.preprocessing.crop_and_resize"
            )

    tty = sys.stderr.isatty()
    start = time.monotonic()
    log.info(
        kv(
            "int8-quantize",
            source=fp32_xml,
            images=len(calibration_crops),
            preset=preset,
            nncf=nncf.__version__,
        )
    )
    with Progress(len(calibration_crops), "int8-calibration", log, unit="img", tty=tty) as progress:

        def feed(crop: np.ndarray) -> dict[str, np.ndarray]:
            # NNCF calls this once per image and pass; progress counts the first pass only.
            if progress.n < progress.total:
                progress.update()
            return {INPUT_NAME: crop[None]}

        with _nncf_output_routed(tty):
            quantized = nncf.quantize(
                model,
                nncf.Dataset(calibration_crops, feed),
                preset=nncf.QuantizationPreset(preset),
                subset_size=len(calibration_crops),
            )
    got = _contract(quantized, f"the model NNCF {nncf.__version__} quantized", Int8Error)
    if got != contract:
        raise Int8Error(
            f"NNCF {nncf.__version__} changed the IR input from {contract[1]} {contract[0]} to "
            f"{got[1]} {got[0]}; agents could not feed this model. Ship the FP32/FP16 IRs "
            "without INT8 and report the NNCF version"
        )

    out = Path(out_xml)
    out.parent.mkdir(parents=True, exist_ok=True)
    # save_model compresses float weights to FP16 by default; the INT8 IR keeps its float parts FP32.
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    log.info(
        kv(
            "int8-saved",
            path=out,
            fake_quantize=fake_quantize,
            bin_bytes=out.with_suffix(".bin").stat().st_size,
            seconds=f"{time.monotonic() - start:.1f}",
        )
    )
    return out


def compare_int8(
    fp32_xml: str | Path, int8_xml: str | Path, crops: list[np.ndarray], labels: list[int]
) -> Int8Report:
    """Run both IRs on labelled ``crops`` (the **test** split) and report accuracy and agreement.

    Nothing here fails on a bad delta: the report is returned for the caller to record and judge.

    Args:
        fp32_xml: the FP32 IR.
        int8_xml: the IR written by :func:`quantize_int8` (its NNCF ``rt_info`` is read back).
        crops: uint8 BGR ``[S, S, 3]`` crops.
        labels: the true label index of each crop.

    Raises:
        ValueError: no crops, ``crops`` and ``labels`` of different lengths, a label outside the
            model's outputs, a crop of the wrong shape, or an ``int8_xml`` that NNCF did not quantize.
    """
    if not crops:
        raise ValueError("the INT8 comparison needs at least one labelled image; use a non-empty test split")
    if len(crops) != len(labels):
        raise ValueError(f"{len(crops)} crops but {len(labels)} labels; give one label per crop")
    calibration_images, preset, version = _nncf_rt_info(int8_xml)
    fp32, int8 = IrRunner(fp32_xml), IrRunner(int8_xml)
    p32s: list[np.ndarray] = []
    p8s: list[np.ndarray] = []
    with Progress(len(crops), "int8-compare", log, unit="img") as progress:
        for crop in crops:
            p32s.append(fp32.predict(crop))
            p8s.append(int8.predict(crop))
            progress.update()
    p32, p8 = np.stack(p32s), np.stack(p8s)
    y = np.asarray(labels)
    if y.min() < 0 or y.max() >= p32.shape[1]:
        raise ValueError(
            f"labels must be indices in [0, {p32.shape[1]}) (the model has {p32.shape[1]} "
            f"outputs), got {sorted(set(labels))}"
        )
    top32, top8 = p32.argmax(axis=1), p8.argmax(axis=1)
    per_image = np.abs(p8 - p32).max(axis=1)
    accuracy_fp32, accuracy_int8 = float(np.mean(top32 == y)), float(np.mean(top8 == y))
    report = Int8Report(
        n=len(crops),
        accuracy_fp32=accuracy_fp32,
        accuracy_int8=accuracy_int8,
        accuracy_delta=accuracy_int8 - accuracy_fp32,
        top1_agreement=float(np.mean(top32 == top8)),
        max_abs_diff=float(per_image.max()),
        mean_abs_diff=float(per_image.mean()),
        calibration_images=calibration_images,
        preset=preset,
        nncf_version=version,
    )
    log.info(
        kv(
            "int8-compared",
            n=report.n,
            accuracy_fp32=f"{accuracy_fp32:.4f}",
            accuracy_int8=f"{accuracy_int8:.4f}",
            delta=f"{report.accuracy_delta:+.4f}",
            agreement=f"{report.top1_agreement:.4f}",
            max_abs_diff=f"{report.max_abs_diff:.2e}",
        )
    )
    return report


def _contract(model: Any, what: str, error: type[Exception]) -> tuple[list[int], str]:
    """``(input shape, input element type)`` of a model with the agents' one-in one-out contract.

    Raises:
        error: not one input and one output, or they are not named ``input``/``probabilities``.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise error(
            f"{what} has {len(model.inputs)} inputs and {len(model.outputs)} outputs; the leukonet "
            "IR contract is one input and one output (export it with trainer.export)"
        )
    inp, out = model.input(), model.output()
    in_names, out_names = tuple(sorted(inp.get_names())), tuple(sorted(out.get_names()))
    if INPUT_NAME not in in_names or OUTPUT_NAME not in out_names:
        raise error(
            f"{what} has input {list(in_names)} and output {list(out_names)}; agents need "
            f"{INPUT_NAME!r} and {OUTPUT_NAME!r} (export it with trainer.export)"
        )
    shape = [int(d) for d in inp.get_partial_shape().to_shape()]
    return shape, inp.get_element_type().get_type_name()


def _nncf_rt_info(xml_path: str | Path) -> tuple[int, str, str]:
    """``(subset size, preset, NNCF version)`` that NNCF wrote into the quantized IR.

    Raises:
        ValueError: the IR carries no NNCF quantization record.
    """
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    keys = [[*_RT_INFO, "subset_size"], [*_RT_INFO, "preset"], ["nncf", "version"]]
    if not all(model.has_rt_info(k) for k in keys):
        raise ValueError(
            f"{xml_path} holds no NNCF quantization record (rt_info nncf/quantization); "
            "pass the IR written by trainer.int8.quantize_int8"
        )
    subset, preset, version = (str(model.get_rt_info(k).astype(str)) for k in keys)
    return int(subset), preset, version


@contextlib.contextmanager
def _nncf_output_routed(tty: bool) -> Iterator[None]:
    """Keep NNCF off stdout while it runs; restore its logger afterwards.

    NNCF's progress bars (rich, on its default console) write to whatever ``sys.stdout`` is when
    they draw, and print their final state even off a terminal; its logger has its own stdout
    handler and ``propagate = False``. NNCF offers no switch for the bars (3.4.0).
    """
    from nncf.common.logging.logger import nncf_logger

    saved = (list(nncf_logger.handlers), nncf_logger.propagate, nncf_logger.level)
    nncf_logger.handlers = []
    nncf_logger.propagate = True
    nncf_logger.setLevel(logging.INFO if tty else logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.handlers, nncf_logger.propagate = saved[0], saved[1]
        nncf_logger.setLevel(saved[2])
