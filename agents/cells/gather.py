"""A field in inference: its crops' callbacks arrive on any thread, the writer gets the field once.

The decode thread submits a field's crops one after another (the backend blocks while every infer
request is busy: back-pressure) and then :meth:`FieldGather.seal` s the field with the number it
submitted. Each crop's ``done`` records its outputs; whichever comes last, the last callback or the
seal, hands the whole field over exactly once. A crop that failed, or a submission the backend
refused part-way, fails the field; the crops already submitted are still waited for, so the model's
backend is never closed under them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agents.backends import Inference

#: ``deliver(inferences in crop order, wall span ms, error | None)``; called exactly once.
DeliverFn = Callable[[list[Inference], float, BaseException | None], None]


class FieldGather:
    """Collects the outputs of up to ``crops`` submitted crops. Thread-safe; never raises in ``done``."""

    def __init__(self, crops: int, deliver: DeliverFn) -> None:
        self._lock = threading.Lock()
        self._outputs: list[Inference | None] = [None] * crops
        self._received = 0
        self._expected: int | None = None
        self._error: BaseException | None = None
        self._delivered = False
        self._deliver = deliver
        self._t0 = time.perf_counter()

    def done(self, index: int, inference: Inference | None, ms: float, error: BaseException | None) -> None:
        """The backend callback of crop ``index`` (bind ``index`` with :func:`functools.partial`)."""
        with self._lock:
            self._received += 1
            if error is not None or inference is None:
                self._error = self._error or error or RuntimeError(f"crop {index}: no output")
            else:
                self._outputs[index] = inference
            ready = self._ready()
        if ready:
            self._hand_over()

    def seal(self, submitted: int, error: BaseException | None = None) -> None:
        """No more crops: ``submitted`` of them went to the backend; ``error`` stopped the rest."""
        with self._lock:
            self._expected = submitted
            if error is not None:
                self._error = self._error or error
            ready = self._ready()
        if ready:
            self._hand_over()

    def _ready(self) -> bool:
        if self._delivered or self._expected is None or self._received < self._expected:
            return False
        self._delivered = True
        return True

    def _hand_over(self) -> None:
        span = (time.perf_counter() - self._t0) * 1e3
        if self._error is not None:
            self._deliver([], span, self._error)
            return
        self._deliver([o for o in self._outputs if o is not None], span, None)
