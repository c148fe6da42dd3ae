"""OpenVINO inference: device selection by name, performance hints and an async request queue.

Works with the ``openvino`` 2023+ API (``openvino.Core``; 2026.x here) and with OpenVINO 2022.3 LTS
(``openvino.runtime.Core``). The Intel NCS2 (device ``MYRIAD``) was dropped in OpenVINO 2023.0: an
NCS2 agent must run OpenVINO 2022.3 on Python <= 3.10 and load the **FP16** IR (``precision: auto``
does that for MYRIAD). Properties are passed as plain strings so both versions accept them.

A bundle always holds ``ir_fp32`` and ``ir_fp16``; ``ir_int8`` (NNCF post-training quantization,
``trainer.int8``) is optional and loaded only when ``precision`` is ``INT8``. A missing IR falls back
along :data:`FALLBACK_PRECISIONS` with an ``ir_precision_fallback`` warning, and :attr:`precision`
says which IR actually runs. ``BF16`` runs the FP32 IR at bf16 and needs the bundle's BF16 parity
figure (``parity.max_abs_diff_bf16``). The inference precision hint and its read-back are in
:mod:`agents.backends.precision`; :attr:`execution_precision` is what the compiled model runs.

A manifest with an ``ood`` section names a second IR output, ``ood.feature_output`` (the pre-logits
features, ``ood.feature_dim`` floats per image): the backend checks at load that the IR has it with
that size, and every request reads it with the probabilities.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from agents.backends.base import (
    Backend,
    BackendError,
    DoneFn,
    Inference,
    IrPrecision,
    Outputs,
    check_batch,
    feature_output,
)
from agents.backends.precision import base_devices, check_read_back, compile_config, is_virtual, read_back
from shared.bundle import Manifest
from shared.logs import kv

log = logging.getLogger(__name__)

ARTIFACT_FOR_PRECISION: dict[IrPrecision, str] = {
    "FP32": "ir_fp32",
    "FP16": "ir_fp16",
    "BF16": "ir_fp32",
    "INT8": "ir_int8",
}
# What runs instead when the bundle lacks the wanted IR, in order. INT8 is an optional extra, so its
# absence is normal; FP32 is the IR it is quantized from (FP16 only for a bundle without FP32).
FALLBACK_PRECISIONS: dict[IrPrecision, tuple[IrPrecision, ...]] = {
    "FP32": ("FP16",),
    "FP16": ("FP32",),
    "INT8": ("FP32", "FP16"),
    "BF16": (),  # validated on the FP32 IR only: no other IR stands in for it
}
#: The manifest's parity key that validates BF16; without it the agent refuses BF16.
BF16_PARITY_KEY = "max_abs_diff_bf16"


def import_openvino() -> ModuleType:
    """The OpenVINO runtime module: ``openvino`` (2023+) or ``openvino.runtime`` (2022.3 LTS).

    Raises:
        BackendError: OpenVINO is not installed.
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendError(
            "OpenVINO is not installed: pip install 'leukonet[agent]' "
            "(or openvino==2022.3.* on Python <= 3.10 for an NCS2)"
        ) from exc
    if hasattr(ov, "Core"):
        return ov
    import openvino.runtime as ov_runtime  # 2022.3 keeps the API here

    return ov_runtime


def check_device(device: str, available: list[str]) -> None:
    """Raise :class:`BackendError` listing the choices unless ``device`` can run here."""
    choices = ", ".join([*available, "AUTO"])
    unknown = [d for d in base_devices(device) if d not in available and d.split(".")[0] not in available]
    if unknown:
        raise BackendError(
            f"OpenVINO device {device!r} is not available on this machine (unknown: {', '.join(unknown)}); "
            f"available: {choices}. Set `device` in the agent config to one of them."
        )


class OpenVinoBackend(Backend):
    """One compiled IR driven through an ``AsyncInferQueue`` of the device's optimal size.

    The IR's batch dimension is 1, so images are separate requests: ``submit`` starts one on the
    next idle request (blocking while all are busy) and the queue's callback hands the probabilities
    to the caller. With ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests in flight THROUGHPUT mode keeps
    every device stream busy while the caller decodes and preprocesses the next images.

    Args:
        device: OpenVINO device name (``CPU``, ``GPU``, ``NPU``, ``MYRIAD``, ``AUTO``, ``AUTO:GPU,CPU``...).
        precision: which IR of the bundle to load (``FP16`` for MYRIAD; ``INT8`` needs ``ir_int8``
            in the bundle, else FP32 runs).
        performance_hint: ``PERFORMANCE_HINT`` passed to ``compile_model``.
        infer_requests: size of the request queue; 0 takes the device's optimal number.
    """

    def __init__(
        self,
        device: str = "AUTO",
        precision: IrPrecision = "FP32",
        performance_hint: Literal["THROUGHPUT", "LATENCY"] = "THROUGHPUT",
        infer_requests: int = 0,
    ) -> None:
        if precision in ("INT8", "BF16") and "MYRIAD" in device.upper():
            raise BackendError(
                f"precision {precision} cannot run on device {device!r}: the NCS2 runs FP16 only; "
                "set precision to auto or FP16"
            )
        self._ov = import_openvino()
        self._core = self._ov.Core()
        check_device(device, list(self._core.available_devices))
        self._device = device
        self._reported_device = device
        self._precision = precision
        self._loaded_precision: IrPrecision | None = None
        self._execution_precision: str | None = None
        self._hint = performance_hint
        self._infer_requests = infer_requests
        self._compiled: Any = None
        self._queue: Any = None
        self._size = 0
        self._input_name = ""
        self._output_name = ""
        self._features: tuple[str, int] | None = None
        self._submit_lock = threading.Lock()

    @property
    def device(self) -> str:
        """The configured device; for AUTO/MULTI also the devices it chose, e.g. ``AUTO(CPU)``."""
        return self._reported_device

    @property
    def precision(self) -> IrPrecision | None:
        """The IR precision that runs (the configured one unless the bundle lacked it); None before load."""
        return self._loaded_precision

    @property
    def execution_precision(self) -> str | None:
        """What the compiled model runs, read back (``f32``, ``bf16``, ``f16``; ``""`` when the
        device cannot say); None before ``load``."""
        return self._execution_precision

    @property
    def parallelism(self) -> int:
        """Requests in the async queue (1 before ``load``)."""
        return len(self._queue) if self._queue is not None else 1

    @property
    def num_requests(self) -> int:
        """Jobs in the async queue (0 before ``load``)."""
        return len(self._queue) if self._queue is not None else 0

    def _ir_path(self, model_dir: Path, manifest: Manifest) -> tuple[Path, IrPrecision]:
        """The IR file to load and its precision: the configured one, else the first fallback present."""
        wanted = ARTIFACT_FOR_PRECISION[self._precision]
        if self._precision == "BF16" and BF16_PARITY_KEY not in manifest.parity:
            raise BackendError(
                f"bundle {manifest.name} {manifest.version} has no BF16 parity figure "
                f"(parity.{BF16_PARITY_KEY}): BF16 was not validated for this model; set precision "
                "to FP32, or export the model on a CPU with bf16 so the trainer measures it"
            )
        if wanted in manifest.artifacts:
            return model_dir / manifest.artifacts[wanted], self._precision
        if self._precision == "FP16" and "MYRIAD" in self._device.upper():
            raise BackendError(
                f"bundle {manifest.name} {manifest.version} has no FP16 IR ({wanted}); "
                "MYRIAD (NCS2) runs FP16 only: re-export the model with an FP16 IR"
            )
        for precision in FALLBACK_PRECISIONS[self._precision]:
            other = ARTIFACT_FOR_PRECISION[precision]
            if other in manifest.artifacts:
                log.warning(
                    kv(
                        "ir_precision_fallback",
                        wanted=self._precision,
                        using=other,
                        model=manifest.name,
                        version=manifest.version,
                        reason=f"bundle has no {wanted}",
                    )
                )
                return model_dir / manifest.artifacts[other], precision
        raise BackendError(
            f"bundle {manifest.name} {manifest.version} has no OpenVINO IR "
            f"(artifacts {sorted(manifest.artifacts)}; need ir_fp32 or ir_fp16)"
        )

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        xml, precision = self._ir_path(Path(model_dir), manifest)
        if not xml.is_file():
            raise BackendError(f"IR file {xml} is missing")
        try:
            precision_config = compile_config(self._core, self._device, self._precision)
            config = {"PERFORMANCE_HINT": self._hint, **precision_config}
            model = self._core.read_model(str(xml))
            compiled = self._core.compile_model(model, self._device, config)
            compiled.input(manifest.input.name)
            compiled.output(manifest.output.name)
            features = feature_output(manifest)
            if features is not None:
                _check_feature_output(compiled, xml, *features)
        except BackendError:
            raise
        except RuntimeError as exc:  # OpenVINO raises RuntimeError subclasses for every failure
            raise BackendError(f"OpenVINO cannot compile {xml} for device {self._device}: {exc}") from exc
        executes = read_back(compiled, self._device)
        check_read_back(self._precision, executes, self._device)
        jobs = self._infer_requests or _optimal_requests(compiled)
        self._compiled = compiled
        self._loaded_precision = precision
        self._execution_precision = executes
        self._input_name, self._output_name = manifest.input.name, manifest.output.name
        self._size = manifest.preprocessing.image_size
        self._queue = self._ov.AsyncInferQueue(compiled, max(1, jobs))
        # A module function bound to the output names only: see _deliver for why not self._on_done.
        self._features = features
        self._queue.set_callback(partial(_deliver, self._output_name, features))
        self._reported_device = _execution_devices(compiled, self._device)
        log.info(
            kv(
                "model_compiled",
                ir=xml,
                precision=precision,
                executes=executes or "unreported",
                device=self._reported_device,
                hint=self._hint,
                requests=len(self._queue),
            )
        )

    def submit(self, image_uint8_bgr: np.ndarray, done: DoneFn) -> None:
        if self._queue is None:
            raise BackendError("OpenVINO backend: submit() before load() (or after close())")
        check_batch(image_uint8_bgr[np.newaxis], self._size)
        data = np.ascontiguousarray(image_uint8_bgr[np.newaxis])
        with self._submit_lock:  # one caller at a time waits for an idle request
            queue = self._queue
            if queue is None:
                raise BackendError("OpenVINO backend: submit() after close()")
            try:
                queue.start_async({self._input_name: data}, (done, time.perf_counter()))
            except RuntimeError as exc:
                raise BackendError(f"OpenVINO cannot start an inference: {exc}") from exc

    def run(self, batch_uint8_bgr: np.ndarray) -> Outputs:
        if self._queue is None:
            raise BackendError("OpenVINO backend: run() before load() (or after close())")
        check_batch(batch_uint8_bgr, self._size)
        n = batch_uint8_bgr.shape[0]
        results: list[Inference | None] = [None] * n
        errors: list[BaseException] = []
        cond = threading.Condition()
        finished = [0]

        def collect(index: int) -> DoneFn:
            def done(inference: Inference | None, ms: float, error: BaseException | None) -> None:
                with cond:
                    results[index] = inference
                    if error is not None:
                        errors.append(error)
                    finished[0] += 1
                    cond.notify_all()

            return done

        for i in range(n):
            self.submit(batch_uint8_bgr[i], collect(i))
        with cond:
            cond.wait_for(lambda: finished[0] == n)
        if errors:
            raise BackendError(f"OpenVINO inference failed for {len(errors)} of {n} images: {errors[0]}")
        got = [r for r in results if r is not None]
        probs = np.stack([r.probabilities for r in got], axis=0)
        if self._features is None:
            return Outputs(probs)
        return Outputs(probs, np.stack([r.features for r in got if r.features is not None], axis=0))

    def wait_idle(self, timeout: float | None = None) -> None:
        queue = self._queue
        if queue is not None:
            queue.wait_all()

    def close(self) -> None:
        with self._submit_lock:
            queue, self._queue = self._queue, None
        if queue is not None:
            queue.wait_all()  # never free requests whose callbacks may still run
        self._compiled = None


def _check_feature_output(compiled: Any, xml: Path, name: str, dim: int) -> None:
    """Raise :class:`BackendError` unless the compiled IR has output ``name``, ``dim`` values per image."""
    try:
        port = compiled.output(name)
    except RuntimeError:
        names = sorted(n for out in compiled.outputs for n in out.get_names())
        raise BackendError(
            f"IR {xml} has no output {name!r} (the manifest's ood.feature_output; outputs: {names}): "
            "re-export the model with its pre-logits features, or remove the ood section"
        ) from None
    shape = port.get_partial_shape()
    if shape.is_static:
        size = int(np.prod([int(d) for d in shape.to_shape()][1:]))
        if size != dim:
            raise BackendError(
                f"IR {xml}: output {name!r} has {size} values per image, the manifest's ood.feature_dim "
                f"says {dim}: the bundle's IR and manifest do not belong together; re-export it"
            )


def _deliver(
    output_name: str, features: tuple[str, int] | None, request: Any, userdata: tuple[DoneFn, float]
) -> None:
    """AsyncInferQueue callback, on OpenVINO's thread: copy the outputs out and hand them to ``done``.

    It holds no reference to the backend. A backend whose own queue's callback refers back to it is
    a cycle through C++ that only lets go when Python's GC runs, and a GC pass that happens to run on
    this thread destroys the queue from its own worker: ``std::terminate`` ("Resource deadlock
    avoided"), the whole process aborts. Nothing may raise out of here either: an exception crossing
    into OpenVINO's thread terminates the process the same way.
    """
    done, t0 = userdata
    try:
        probs = np.array(request.get_tensor(output_name).data[0], dtype=np.float32, copy=True)
        feats = None
        if features is not None:
            feats = np.array(request.get_tensor(features[0]).data[0], dtype=np.float32, copy=True).reshape(-1)
            if feats.size != features[1]:
                raise RuntimeError(
                    f"output {features[0]!r} gave {feats.size} features, expected {features[1]}"
                )
        latency = getattr(request, "latency", None)
        outcome: tuple[Inference | None, float, BaseException | None] = (
            Inference(probs, feats),
            float(latency) if latency else (time.perf_counter() - t0) * 1e3,
            None,
        )
    except RuntimeError as exc:
        failed = BackendError(f"OpenVINO inference failed: {exc}")
        outcome = (None, (time.perf_counter() - t0) * 1e3, failed)
    try:
        done(*outcome)
    except Exception as exc:  # noqa: BLE001 - see above: never let it reach the C++ thread
        log.exception(kv("inference_callback_failed", error=repr(exc)[:300]))


def _optimal_requests(compiled: Any) -> int:
    try:
        return int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    except RuntimeError:
        return 1


def _execution_devices(compiled: Any, device: str) -> str:
    """``device`` for a physical device; ``AUTO(GPU)`` etc. when a virtual device picked for us."""
    if not is_virtual(device):
        return device
    try:
        chosen = compiled.get_property("EXECUTION_DEVICES")
    except RuntimeError:
        return device
    names = [str(d) for d in chosen] if isinstance(chosen, list | tuple) else [str(chosen)]
    return f"{device}({','.join(names)})"[:64] if names else device
