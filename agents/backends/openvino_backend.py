"""OpenVINO inference: device selection by name, performance hints and an async request queue.

Works with the ``openvino`` 2023+ API (``openvino.Core``; 2026.x here) and with OpenVINO 2022.3 LTS
(``openvino.runtime.Core``). The Intel NCS2 (device ``MYRIAD``) was dropped in OpenVINO 2023.0: an
NCS2 agent must run OpenVINO 2022.3 on Python <= 3.10 and load the **FP16** IR (``precision: auto``
does that for MYRIAD). Properties are passed as plain strings so both versions accept them.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from agents.backends.base import Backend, BackendError, check_batch
from shared.bundle import Manifest
from shared.logs import kv

log = logging.getLogger(__name__)

VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
ARTIFACT_FOR_PRECISION = {"FP32": "ir_fp32", "FP16": "ir_fp16"}


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


def _base_names(device: str) -> list[str]:
    """Physical device names in ``device``: ``AUTO:GPU,CPU`` -> [GPU, CPU]; ``GPU.1`` -> [GPU.1]."""
    head, _, rest = device.partition(":")
    if head.upper() in VIRTUAL_DEVICES:
        return [d.strip() for d in rest.split(",") if d.strip()]
    return [device]


def check_device(device: str, available: list[str]) -> None:
    """Raise :class:`BackendError` listing the choices unless ``device`` can run here."""
    choices = ", ".join([*available, "AUTO"])
    unknown = [d for d in _base_names(device) if d not in available and d.split(".")[0] not in available]
    if unknown:
        raise BackendError(
            f"OpenVINO device {device!r} is not available on this machine (unknown: {', '.join(unknown)}); "
            f"available: {choices}. Set `device` in the agent config to one of them."
        )


class OpenVinoBackend(Backend):
    """One compiled IR; ``infer`` of one image uses a sync request, of a batch an ``AsyncInferQueue``.

    The IR's batch dimension is 1, so a batch of N images runs as N requests in flight on a queue of
    ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` jobs, which is how THROUGHPUT mode keeps every stream busy.
    """

    def __init__(
        self,
        device: str = "AUTO",
        precision: Literal["FP32", "FP16"] = "FP32",
        performance_hint: Literal["THROUGHPUT", "LATENCY"] = "THROUGHPUT",
    ) -> None:
        self._ov = import_openvino()
        self._core = self._ov.Core()
        check_device(device, list(self._core.available_devices))
        self._device = device
        self._precision = precision
        self._hint = performance_hint
        self._compiled: Any = None
        self._request: Any = None
        self._queue: Any = None
        self._size = 0
        self._input_name = ""
        self._output_name = ""
        self._lock = threading.Lock()

    @property
    def device(self) -> str:
        return self._device

    @property
    def num_requests(self) -> int:
        """Jobs in the async queue (0 before ``load``)."""
        return len(self._queue) if self._queue is not None else 0

    def _ir_path(self, model_dir: Path, manifest: Manifest) -> Path:
        wanted = ARTIFACT_FOR_PRECISION[self._precision]
        other = ARTIFACT_FOR_PRECISION["FP16" if self._precision == "FP32" else "FP32"]
        if wanted in manifest.artifacts:
            return model_dir / manifest.artifacts[wanted]
        if self._precision == "FP16" and "MYRIAD" in self._device.upper():
            raise BackendError(
                f"bundle {manifest.name} {manifest.version} has no FP16 IR ({wanted}); "
                "MYRIAD (NCS2) runs FP16 only: re-export the model with an FP16 IR"
            )
        if other in manifest.artifacts:
            log.warning(kv("ir_precision_fallback", wanted=self._precision, using=other, model=manifest.name))
            return model_dir / manifest.artifacts[other]
        raise BackendError(
            f"bundle {manifest.name} {manifest.version} has no OpenVINO IR "
            f"(artifacts {sorted(manifest.artifacts)}; need ir_fp32 or ir_fp16)"
        )

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        xml = self._ir_path(Path(model_dir), manifest)
        if not xml.is_file():
            raise BackendError(f"IR file {xml} is missing")
        try:
            model = self._core.read_model(str(xml))
            compiled = self._core.compile_model(model, self._device, {"PERFORMANCE_HINT": self._hint})
            compiled.input(manifest.input.name)
            compiled.output(manifest.output.name)
        except RuntimeError as exc:  # OpenVINO raises RuntimeError subclasses for every failure
            raise BackendError(f"OpenVINO cannot compile {xml} for device {self._device}: {exc}") from exc
        try:
            jobs = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        except RuntimeError:
            jobs = 1
        self._compiled = compiled
        self._input_name, self._output_name = manifest.input.name, manifest.output.name
        self._size = manifest.preprocessing.image_size
        self._request = compiled.create_infer_request()
        self._queue = self._ov.AsyncInferQueue(compiled, max(1, jobs))
        log.info(
            kv("model_compiled", ir=xml, device=self._device, hint=self._hint, requests=len(self._queue))
        )

    def infer(self, batch_uint8_bgr: np.ndarray) -> np.ndarray:
        if self._compiled is None:
            raise BackendError("OpenVINO backend: infer() before load() (or after close())")
        check_batch(batch_uint8_bgr, self._size)
        with self._lock:
            if batch_uint8_bgr.shape[0] == 1:
                return self._infer_sync(batch_uint8_bgr)
            return self._infer_async(batch_uint8_bgr)

    def _infer_sync(self, batch: np.ndarray) -> np.ndarray:
        self._request.infer({self._input_name: np.ascontiguousarray(batch)})
        out = self._request.get_tensor(self._output_name).data
        return np.array(out, dtype=np.float32, copy=True)

    def _infer_async(self, batch: np.ndarray) -> np.ndarray:
        results: list[np.ndarray | None] = [None] * batch.shape[0]
        output_name = self._output_name

        def done(request: Any, index: int) -> None:
            results[index] = np.array(request.get_tensor(output_name).data, dtype=np.float32, copy=True)

        self._queue.set_callback(done)
        for i in range(batch.shape[0]):
            self._queue.start_async({self._input_name: np.ascontiguousarray(batch[i : i + 1])}, i)
        self._queue.wait_all()
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise BackendError(f"OpenVINO returned no output for batch items {missing}")
        return np.concatenate([r for r in results if r is not None], axis=0)

    def close(self) -> None:
        with self._lock:
            self._queue = None
            self._request = None
            self._compiled = None
