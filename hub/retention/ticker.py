"""The periodic retention run in ``leukonet hub serve``, every ``retention.interval_s``."""

from __future__ import annotations

import logging
import threading

from hub.retention.policy import Retention, RetentionReport
from shared.logs import kv

log = logging.getLogger(__name__)


class RetentionTicker:
    """A daemon thread running :meth:`Retention.run` at start and then every ``interval_s``.

    A failed run (database, disk, lock) is logged and counted in ``failures`` and retried at the
    next interval; it never ends the thread, nor ``serve``. :meth:`stop` ends a run between batches.
    """

    def __init__(self, retention: Retention, interval_s: float) -> None:
        self.retention = retention
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        self.failures = 0
        self.last: RetentionReport | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("retention ticker already started")
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)
        self._thread.start()
        log.info(kv("retention_ticker_started", interval_s=self.interval_s))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval_s)

    def run_once(self) -> None:
        """One run, its failure logged and counted instead of raised."""
        try:
            self.last = self.retention.run(should_stop=self._stop.is_set)
            self.runs += 1
        # A maintenance thread must outlive any failure, whatever its kind: each one is logged
        # with its traceback and counted, and the next interval tries again.
        except Exception:  # noqa: BLE001
            self.failures += 1
            log.exception(kv("retention_failed", failures=self.failures, action="retrying next interval"))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current batch (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
