"""Vitals the agent reports in its status: host load, throughput and inference latency."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil

from shared.schemas import Vitals


class InferenceStats:
    """Rolling inference latencies (last ``window`` images) and images/s over ``rate_window_s``."""

    def __init__(
        self, window: int = 500, rate_window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._latencies: deque[float] = deque(maxlen=window)
        self._done_at: deque[float] = deque()
        self._rate_window_s = rate_window_s
        self._clock = clock
        self._lock = threading.Lock()
        self.total = 0
        #: errors a loop survived, by reason (``decode_unexpected``...)
        self.errors: Counter[str] = Counter()

    def count_error(self, reason: str) -> None:
        with self._lock:
            self.errors[reason] += 1

    def record(self, inference_ms: float) -> None:
        """One image classified, with its share of the inference time."""
        now = self._clock()
        with self._lock:
            self._latencies.append(inference_ms)
            self._done_at.append(now)
            self.total += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._done_at and now - self._done_at[0] > self._rate_window_s:
            self._done_at.popleft()

    def snapshot(self) -> tuple[float, float | None, float | None]:
        """``(images_per_s, p50_ms, p95_ms)``; percentiles are None before the first image."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            rate = len(self._done_at) / self._rate_window_s
            lat = list(self._latencies)
        if not lat:
            return rate, None, None
        p50, p95 = np.percentile(np.asarray(lat), [50, 95])
        return rate, float(p50), float(p95)


def _temperature_c() -> float | None:
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is None:
        return None
    readings = [t.current for entries in sensors().values() for t in entries if t.current]
    return max(readings) if readings else None


def collect_vitals(state_dir: Path, stats: InferenceStats, outbox_depth: int) -> Vitals:
    """Current host vitals (CPU since the previous call, memory, free disk of ``state_dir``)."""
    rate, p50, p95 = stats.snapshot()
    disk = psutil.disk_usage(str(state_dir))
    return Vitals(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_percent=psutil.virtual_memory().percent,
        disk_free_mb=round(disk.free / 2**20, 1),
        temperature_c=_temperature_c(),
        outbox_depth=outbox_depth,
        images_per_s=round(rate, 3),
        p50_inference_ms=None if p50 is None else round(p50, 2),
        p95_inference_ms=None if p95 is None else round(p95, 2),
    )
