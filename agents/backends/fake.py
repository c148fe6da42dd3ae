"""A deterministic stand-in backend for tests: no network, probabilities from image statistics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agents.backends.base import Backend, BackendError, check_batch
from shared.bundle import Manifest

log = logging.getLogger(__name__)


class FakeBackend(Backend):
    """Probabilities from channel means: bluish images favour label 0, reddish ones the last label.

    The same pixels always give the same probabilities, so tests can predict labels by painting
    images (``blue`` -> ``labels[0]``, ``red`` -> ``labels[-1]``).
    """

    runs_network = False

    def __init__(self, **_ignored: object) -> None:
        # Device, precision and hint mean nothing without a network; results report "fake".
        self._device = "fake"
        self._labels: list[str] | None = None
        self._size = 0

    @property
    def device(self) -> str:
        return self._device

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        self._labels = list(manifest.labels)
        self._size = manifest.preprocessing.image_size

    def infer(self, batch_uint8_bgr: np.ndarray) -> np.ndarray:
        if self._labels is None:
            raise BackendError("fake backend: infer() before load()")
        check_batch(batch_uint8_bgr, self._size)
        means = batch_uint8_bgr.reshape(batch_uint8_bgr.shape[0], -1, 3).mean(axis=1) / 255.0  # [N, 3] BGR
        n = len(self._labels)
        # Label k's logit moves from "blue" (k = 0) to "red" (k = n - 1) linearly.
        weights = np.linspace(1.0, -1.0, n, dtype=np.float64)
        logits = 8.0 * np.outer(means[:, 0] - means[:, 2], weights)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def close(self) -> None:
        self._labels = None
