"""The inference backend interface every plugin implements.

A backend runs one model: ``load(model_dir, manifest)`` once, then ``run(batch)`` / ``infer(batch)``
or ``submit`` any number of times, then ``close()``. All take the IR input exactly as the manifest
describes it (uint8, BGR, NHWC, ``[S, S, 3]`` per image) and give the softmax over the labels as
float32; when the manifest has an ``ood`` section they also give each image's pre-logits features
(the IR output ``ood.feature_output``, ``ood.feature_dim`` floats), which the agent scores for the
out-of-distribution flag.

``run`` is synchronous and returns both outputs (:class:`Outputs`); ``infer`` is its probabilities
only (smoke tests, the one-shot CLI). ``submit`` is what the agent's pipeline uses: it starts one
image and returns as soon as the device accepted it, blocking only while every infer request is busy
(that is the pipeline's back-pressure); the callback receives an :class:`Inference` later, on a
backend thread. The base class gives a synchronous ``submit`` so a simple backend only writes ``run``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from shared.bundle import Manifest


@dataclass(frozen=True)
class Inference:
    """One image's outputs.

    Attributes:
        probabilities: ``[num_labels]`` float32 softmax.
        features: ``[ood.feature_dim]`` float32 pre-logits features when the manifest has an ``ood``
            section, else None.
    """

    probabilities: np.ndarray
    features: np.ndarray | None = None


@dataclass(frozen=True)
class Outputs:
    """A batch's outputs: ``probabilities [N, num_labels]`` and ``features [N, feature_dim]`` (or None)."""

    probabilities: np.ndarray
    features: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.probabilities.shape[0])

    def __getitem__(self, index: int) -> Inference:
        feats = None if self.features is None else self.features[index]
        return Inference(self.probabilities[index], feats)


#: ``done(inference | None, inference_ms, error | None)``; exactly one of inference and error is set.
#: Called once per submitted image, possibly on another thread.
DoneFn = Callable[[Inference | None, float, BaseException | None], None]


def feature_output(manifest: Manifest) -> tuple[str, int] | None:
    """(IR output name, dimension) of the pre-logits features the manifest's ``ood`` section names."""
    return None if manifest.ood is None else (manifest.ood.feature_output, manifest.ood.feature_dim)


#: The precision a backend runs: ``FP32``, ``FP16`` and ``INT8`` load ``ir_fp32``, ``ir_fp16`` and the
#: optional ``ir_int8``; ``BF16`` runs ``ir_fp32`` at bfloat16 (validated by the bundle's BF16 parity).
IrPrecision = Literal["FP32", "FP16", "BF16", "INT8"]


class BackendError(RuntimeError):
    """A backend that cannot load or run a model; the message says what to change."""


class Backend(ABC):
    """One loaded model on one device. Not shared between models: a model swap builds a new one."""

    #: False when the backend does not compute the network (the fake one): skip reference checks.
    runs_network: bool = True

    @property
    @abstractmethod
    def device(self) -> str:
        """The device name results report (e.g. ``CPU``, ``AUTO``, ``fake``)."""

    @abstractmethod
    def load(self, model_dir: Path, manifest: Manifest) -> None:
        """Prepare the model extracted in ``model_dir`` (verified) for inference.

        Raises:
            BackendError: the artifact is missing or the device cannot compile it.
        """

    @abstractmethod
    def run(self, batch_uint8_bgr: np.ndarray) -> Outputs:
        """Classify ``[N, S, S, 3]`` uint8 BGR images: ``[N, num_labels]`` float32 probabilities and,
        when the manifest has an ``ood`` section, ``[N, feature_dim]`` float32 features.

        Raises:
            BackendError: not loaded, or the batch does not match the model input.
        """

    def infer(self, batch_uint8_bgr: np.ndarray) -> np.ndarray:
        """The probabilities of :meth:`run` only: ``[N, num_labels]`` float32.

        Raises:
            BackendError: not loaded, or the batch does not match the model input.
        """
        return self.run(batch_uint8_bgr).probabilities

    @property
    def precision(self) -> IrPrecision | None:
        """The precision of the IR actually loaded (after any fallback); None before ``load`` or
        when the backend runs no IR (the fake one)."""
        return None

    @property
    def execution_precision(self) -> str | None:
        """The inference precision the compiled model reports it runs (``f32``, ``bf16``...);
        ``""`` when the device cannot say, None before ``load`` or without a network."""
        return None

    @property
    def parallelism(self) -> int:
        """Images the backend works on at once (infer requests in flight); 1 for synchronous ones."""
        return 1

    def submit(self, image_uint8_bgr: np.ndarray, done: DoneFn) -> None:
        """Start classifying one ``[S, S, 3]`` image; ``done`` receives the outcome.

        This default runs :meth:`run` in the caller's thread and calls ``done`` before returning.
        Errors of the image itself are passed to ``done``; the method raises only when the backend
        cannot take work at all.

        Raises:
            BackendError: not loaded or already closed.
        """
        t0 = time.perf_counter()
        try:
            outputs = self.run(image_uint8_bgr[np.newaxis])
        except BackendError as exc:
            done(None, (time.perf_counter() - t0) * 1e3, exc)
            return
        done(outputs[0], (time.perf_counter() - t0) * 1e3, None)

    def wait_idle(self, timeout: float | None = None) -> None:  # noqa: B027 - optional hook, no-op here
        """Return once every submitted image has had its ``done`` call (no-op when synchronous)."""

    @abstractmethod
    def close(self) -> None:
        """Release the model; the backend is unusable afterwards. Idempotent."""


def check_batch(batch: np.ndarray, size: int) -> None:
    """Raise :class:`BackendError` unless ``batch`` is uint8 ``[N, size, size, 3]`` with N >= 1."""
    if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != (size, size, 3) or batch.shape[0] < 1:
        raise BackendError(
            f"input batch must be uint8 [N, {size}, {size}, 3] (BGR, NHWC), "
            f"got {batch.dtype} {list(batch.shape)}"
        )
