"""The inference backend interface every plugin implements.

A backend runs one model: ``load(model_dir, manifest)`` once, then ``infer(batch)`` any number of
times, then ``close()``. ``infer`` takes the IR input exactly as the manifest describes it (uint8,
BGR, NHWC, ``[N, S, S, 3]``) and returns the softmax ``[N, num_labels]`` as float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from shared.bundle import Manifest


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
    def infer(self, batch_uint8_bgr: np.ndarray) -> np.ndarray:
        """Classify ``[N, S, S, 3]`` uint8 BGR images; return ``[N, num_labels]`` float32 probabilities.

        Raises:
            BackendError: not loaded, or the batch does not match the model input.
        """

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
