"""A deterministic stand-in backend for tests: no network, outputs from image statistics."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from agents.backends.base import Backend, BackendError, Outputs, check_batch, feature_output
from shared.bundle import Manifest

log = logging.getLogger(__name__)

#: Seed of the fixed projection from image statistics to features: the same for every fake backend,
#: so features fitted by one instance (an OOD model in a test) mean the same to another.
FEATURE_SEED = 20_260_114
#: Statistics per image the features are projected from: mean and standard deviation of each BGR
#: channel over the image, and each channel's mean over the four quadrants.
N_STATS = 18


def image_statistics(batch_uint8_bgr: np.ndarray) -> np.ndarray:
    """``[N, 18]`` float64 statistics of ``[N, S, S, 3]`` images, in [0, 1] (see :data:`N_STATS`)."""
    x = batch_uint8_bgr.astype(np.float64) / 255.0
    half = x.shape[1] // 2
    quadrants = [x[:, :half, :half], x[:, :half, half:], x[:, half:, :half], x[:, half:, half:]]
    parts = [x.mean(axis=(1, 2)), x.std(axis=(1, 2)), *(q.mean(axis=(1, 2)) for q in quadrants)]
    return np.concatenate(parts, axis=1)


class FakeBackend(Backend):
    """Probabilities from channel means: bluish images favour label 0, reddish ones the last label.

    The same pixels always give the same probabilities, so tests can predict labels by painting
    images (``blue`` -> ``labels[0]``, ``red`` -> ``labels[-1]``). When the manifest has an ``ood``
    section the backend also gives ``ood.feature_dim`` features per image: a fixed random projection
    (seed :data:`FEATURE_SEED`) of the image's colour and texture statistics through ``tanh``, so
    images of other colours or textures than a test's "training" images get features far from theirs.
    """

    runs_network = False

    def __init__(self, **_ignored: object) -> None:
        # Device, precision and hint mean nothing without a network; results report "fake".
        self._device = "fake"
        self._labels: list[str] | None = None
        self._size = 0
        self._projection: np.ndarray | None = None

    @property
    def device(self) -> str:
        return self._device

    def load(self, model_dir: Path, manifest: Manifest) -> None:
        self._labels = list(manifest.labels)
        self._size = manifest.preprocessing.image_size
        features = feature_output(manifest)
        if features is None:
            self._projection = None
        else:
            rng = np.random.default_rng(FEATURE_SEED)
            self._projection = rng.standard_normal((N_STATS, features[1])) * (2.0 / np.sqrt(N_STATS))

    def run(self, batch_uint8_bgr: np.ndarray) -> Outputs:
        if self._labels is None:
            raise BackendError("fake backend: run() before load()")
        check_batch(batch_uint8_bgr, self._size)
        means = batch_uint8_bgr.reshape(batch_uint8_bgr.shape[0], -1, 3).mean(axis=1) / 255.0  # [N, 3] BGR
        n = len(self._labels)
        # Label k's logit moves from "blue" (k = 0) to "red" (k = n - 1) linearly.
        weights = np.linspace(1.0, -1.0, n, dtype=np.float64)
        logits = 8.0 * np.outer(means[:, 0] - means[:, 2], weights)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        if self._projection is None:
            return Outputs(probs)
        stats = image_statistics(batch_uint8_bgr)
        return Outputs(probs, np.tanh((stats - 0.5) @ self._projection).astype(np.float32))

    def close(self) -> None:
        self._labels = None
