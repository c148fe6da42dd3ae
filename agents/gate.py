"""Whether the pipeline may take images now: outbox cap, free disk, and a pause after errors.

The sources ask :meth:`IntakeGate.blocked_reason` before taking each image; a non-empty reason
keeps images where they are (the watch folder is the buffer). A reason that appears is logged as an
error and repeated every ``alarm_interval_s`` while it lasts; its end is logged too.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from agents.config import OutboxConfig
from agents.outbox import Outbox
from shared.logs import kv

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 5.0
DISK_CHECK_INTERVAL_S = 1.0


class IntakeGate:
    """The reasons intake stops. Thread-safe.

    Args:
        outbox: its depth is held against ``limits.max_rows``.
        limits: the ``outbox`` config section (cap, free disk, alarm interval).
        state_dir: its disk's free space is watched (``limits.min_free_disk_mb``).
    """

    def __init__(self, outbox: Outbox, limits: OutboxConfig, state_dir: Path) -> None:
        self.outbox, self.limits, self.state_dir = outbox, limits, state_dir
        self.error_backoff_s = ERROR_BACKOFF_S
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._pause_reason = ""
        self._disk_checked_at = -1e9
        self._disk_low = ""
        self._alarm_reason = ""
        self._alarm_at = 0.0

    def pause(self, reason: str) -> None:
        """Stop intake for ``error_backoff_s`` (an inference or outbox error), giving ``reason``."""
        self._paused_until = time.monotonic() + self.error_backoff_s
        self._pause_reason = f"{reason} (retrying in {self.error_backoff_s:g} s)"

    def blocked_reason(self) -> str:
        """Why sources must not take images now ('' when they may): outbox cap, low disk, errors."""
        with self._lock:
            now = time.monotonic()
            reason = self._outbox_full() or self._disk_reason(now)
            if not reason and now < self._paused_until:
                reason = self._pause_reason
            self._alarm(reason, now)
            return reason

    def _outbox_full(self) -> str:
        depth = self.outbox.depth()
        if depth < self.limits.max_rows:
            return ""
        return (
            f"outbox full: {depth} results wait for the broker (cap outbox.max_rows="
            f"{self.limits.max_rows}); new images wait until the broker acknowledges results"
        )

    def _disk_reason(self, now: float) -> str:
        if self.limits.min_free_disk_mb <= 0:
            return ""
        if now - self._disk_checked_at >= DISK_CHECK_INTERVAL_S:
            self._disk_checked_at = now
            free_mb = shutil.disk_usage(self.state_dir).free / 2**20
            self._disk_low = (
                f"disk almost full: {free_mb:.0f} MB free on {self.state_dir} "
                f"(< outbox.min_free_disk_mb={self.limits.min_free_disk_mb:g}); free space to resume"
                if free_mb < self.limits.min_free_disk_mb
                else ""
            )
        return self._disk_low

    def _alarm(self, reason: str, now: float) -> None:
        if reason and (reason != self._alarm_reason or now - self._alarm_at >= self.limits.alarm_interval_s):
            log.error(kv("intake_paused", reason=reason, outbox_depth=self.outbox.depth()))
            self._alarm_at = now
        elif not reason and self._alarm_reason:
            log.warning(kv("intake_resumed", previous_reason=self._alarm_reason))
        self._alarm_reason = reason
