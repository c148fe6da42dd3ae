"""The periodic rollout tick in ``leukonet hub serve``: timeouts and retries, every ``rollouts.tick_s``."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import SQLAlchemyError

from hub.mqtt.publisher import BrokerUnavailable
from hub.rollouts.engine import RolloutEngine, RolloutError
from shared.logs import kv

log = logging.getLogger(__name__)


class RolloutTicker:
    """A daemon thread calling :meth:`RolloutEngine.tick` every ``interval_s`` until :meth:`stop`.

    A database or broker outage is logged and retried on the next tick; it never ends the thread.
    """

    def __init__(self, engine: RolloutEngine, interval_s: float) -> None:
        self.engine = engine
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("rollout ticker already started")
        self._thread = threading.Thread(target=self._run, name="rollout-tick", daemon=True)
        self._thread.start()
        log.info(kv("rollout_ticker_started", interval_s=self.interval_s))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.engine.tick()
            except (SQLAlchemyError, BrokerUnavailable, RolloutError) as exc:
                self.failures += 1
                log.error(kv("rollout_tick_failed", error=str(exc)[:300], action="retrying next tick"))

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current tick (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
