"""Inference backends, registered explicitly by name in :data:`BACKENDS`.

``openvino`` runs the bundle's IR; ``fake`` computes probabilities from image statistics so agent
tests run without a network. Add a backend by adding it to :data:`BACKENDS`; nothing is discovered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from agents.backends.base import Backend, BackendError, DoneFn, Inference, IrPrecision, Outputs
from agents.backends.fake import FakeBackend
from agents.backends.openvino_backend import OpenVinoBackend

BackendFactory = Callable[..., Backend]

BACKENDS: dict[str, BackendFactory] = {
    "openvino": OpenVinoBackend,
    "fake": FakeBackend,
}


def create_backend(
    name: str,
    device: str = "AUTO",
    precision: IrPrecision = "FP32",
    performance_hint: Literal["THROUGHPUT", "LATENCY"] = "THROUGHPUT",
    infer_requests: int = 0,
) -> Backend:
    """Instantiate backend ``name`` for ``device`` (not loaded yet).

    ``infer_requests`` sizes an asynchronous backend's request queue (0 = the device's optimum).

    Raises:
        ValueError: ``name`` is not registered; the message lists the known names.
        BackendError: the backend cannot run here (e.g. unknown OpenVINO device).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; known backends: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](
        device=device, precision=precision, performance_hint=performance_hint, infer_requests=infer_requests
    )


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendError",
    "DoneFn",
    "Inference",
    "IrPrecision",
    "Outputs",
    "create_backend",
]
