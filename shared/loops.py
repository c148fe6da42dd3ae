"""Long-running loops that cannot die quietly: supervised threads plus the liveness health reports.

Every process (hub serve, hub ingest, the agent) runs a few loops: MQTT network threads, writer
threads, decode threads. Each loop already handles errors per message or file; a loop that dies
anyway (a bug) is restarted here after a short back-off and counted, and :meth:`Loops.snapshot`
tells health endpoints which loops run, how often they were restarted, and how long ago each last
did something, so "online" never hides a dead loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.logs import kv

log = logging.getLogger(__name__)


@dataclass
class _LoopRecord:
    alive: bool = False
    restarts: int = 0
    last_activity: float | None = None
    external: Callable[[], bool] | None = None  # liveness of a thread someone else owns (paho's)


class Loops:
    """The liveness registry of one process's loops (thread-safe).

    Args:
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._loops: dict[str, _LoopRecord] = {}

    def _record(self, name: str) -> _LoopRecord:
        with self._lock:
            return self._loops.setdefault(name, _LoopRecord())

    def beat(self, name: str) -> None:
        """``name`` just did some work (took a message, wrote a batch...)."""
        now = self._clock()
        with self._lock:
            self._loops.setdefault(name, _LoopRecord()).last_activity = now

    def watch(self, name: str, is_alive: Callable[[], bool]) -> None:
        """Report a loop this registry does not run (e.g. paho's network thread) by asking ``is_alive``."""
        self._record(name).external = is_alive

    def forget(self, name: str) -> None:
        with self._lock:
            self._loops.pop(name, None)

    def spawn(
        self, name: str, target: Callable[[], None], stop: threading.Event, backoff_s: float = 1.0
    ) -> threading.Thread:
        """Start ``target`` on a daemon thread that restarts it (after ``backoff_s``) when it raises.

        ``target`` returning normally ends the loop (that is how loops stop); an exception is
        logged with its traceback, counted in ``restarts``, and the loop runs again unless ``stop``
        is set.
        """
        record = self._record(name)

        def run() -> None:
            while True:
                record.alive = True
                try:
                    target()
                    return
                except Exception as exc:  # noqa: BLE001 - the point: a bug must not end the loop for good
                    with self._lock:
                        record.restarts += 1
                    log.exception(
                        kv("loop_crashed", loop=name, restarts=record.restarts, error=repr(exc)[:300])
                    )
                finally:
                    record.alive = False
                if stop.wait(backoff_s):
                    return

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def snapshot(self) -> dict[str, dict[str, object]]:
        """``{loop: {"alive": bool, "restarts": int, "last_activity_age_s": float | None}}``."""
        now = self._clock()
        with self._lock:
            items = list(self._loops.items())
        out: dict[str, dict[str, object]] = {}
        for name, r in items:
            alive = r.external() if r.external is not None else r.alive
            age = None if r.last_activity is None else round(now - r.last_activity, 3)
            out[name] = {"alive": bool(alive), "restarts": r.restarts, "last_activity_age_s": age}
        return out

    def dead(self) -> list[str]:
        """Names of the loops that are not running now."""
        return sorted(name for name, state in self.snapshot().items() if not state["alive"])


def paho_network_alive(client: Any) -> bool:
    """Whether a paho client's ``loop_start`` network thread still runs (paho keeps it as ``_thread``)."""
    thread = getattr(client, "_thread", None)
    return thread is not None and bool(thread.is_alive())
