"""The camera/video source: OpenCV ``VideoCapture`` frames, one in every ``every_nth_frame``.

``camera.source`` is a device index (``0``), a device path (``/dev/video2``), a stream URL
(``rtsp://...``) or a video file. Skipped frames are only grabbed, not decoded. Each kept frame
(BGR, as OpenCV returns it) goes through the same pipeline as a file: crop + resize, inference,
outbox; its ``image_name`` is ``<name_prefix>-<UTC time>-f<frame number>`` and its sha256 is taken
over the raw pixels. A frame lives only in memory, so its job needs no ``on_done`` hook: the result
in the outbox is all that remains of it.

A live camera cannot wait: while the pipeline is full, has no model, or is paused, its frames are
dropped and counted (logged every ``DROP_LOG_EVERY`` drops). A video *file* can wait, so it is read
only as fast as the pipeline classifies and every ``every_nth_frame`` frame is classified; at its end
the source stops (``stop_at_end``) or reopens it. A camera that fails to open or stops delivering is
reopened every ``reopen_s`` seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2

from agents.config import CameraConfig
from agents.jobs import Job
from agents.models import ModelManager
from agents.pipeline import Pipeline
from agents.sources.base import SourceContext, SourceThread
from shared.logs import kv

log = logging.getLogger(__name__)

DROP_LOG_EVERY = 100
CaptureFactory = Callable[[int | str], Any]


def capture_target(source: str) -> int | str:
    """``"0"`` -> device index 0; anything else (path, URL) as is."""
    return int(source) if source.isdigit() else source


def open_capture(target: int | str) -> Any:
    """``cv2.VideoCapture(target)``."""
    return cv2.VideoCapture(target)


class CameraSource:
    """Reads frames on its own thread until :meth:`stop`.

    Args:
        config: the ``camera`` config section.
        pipeline: where kept frames go.
        models: frames wait (file) or are dropped (camera) while no model is active.
        capture_factory: opens a capture (``cv2.VideoCapture``; tests may pass another).
    """

    def __init__(
        self,
        config: CameraConfig,
        pipeline: Pipeline,
        models: ModelManager,
        capture_factory: CaptureFactory | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.models = models
        self._open: CaptureFactory = capture_factory or open_capture
        self._worker = SourceThread("camera-source", self._run)
        self._stop = self._worker.stopping
        self.is_file = Path(config.source).is_file()
        self.frames_read = 0
        self.frames_submitted = 0
        self.frames_dropped = 0
        self.finished = threading.Event()

    @classmethod
    def from_context(cls, ctx: SourceContext) -> CameraSource | None:
        """The camera of the config's ``camera`` section; None unless ``camera.enabled``."""
        if not ctx.config.camera.enabled:
            return None
        return cls(ctx.config.camera, ctx.pipeline, ctx.models)

    def start(self) -> None:
        """Open the camera (or video) and read it on its own thread."""
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._worker.stop(timeout)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                capture = self._open(capture_target(self.config.source))
                if not capture.isOpened():
                    log.error(
                        kv(
                            "camera_open_failed",
                            source=self.config.source,
                            retry_in_s=self.config.reopen_s,
                            hint="check camera.source (index, device path, URL or video file)",
                        )
                    )
                else:
                    log.info(
                        kv("camera_opened", source=self.config.source, every_nth=self.config.every_nth_frame)
                    )
                    try:
                        self._read(capture)
                    finally:
                        capture.release()
                    if self.is_file and self.config.stop_at_end and not self._stop.is_set():
                        log.info(
                            kv(
                                "camera_source_ended",
                                source=self.config.source,
                                frames=self.frames_read,
                                classified=self.frames_submitted,
                                dropped=self.frames_dropped,
                            )
                        )
                        return
                self._stop.wait(self.config.reopen_s)
        finally:
            self.finished.set()

    def _read(self, capture: Any) -> None:
        nth = self.config.every_nth_frame
        while not self._stop.is_set():
            if not capture.grab():
                if not self.is_file:
                    log.warning(kv("camera_stopped_delivering", source=self.config.source))
                return
            self.frames_read += 1
            if (self.frames_read - 1) % nth:
                continue
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                log.warning(kv("camera_frame_unreadable", source=self.config.source, frame=self.frames_read))
                continue
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            job = Job(name=f"{self.config.name_prefix}-{stamp}-f{self.frames_read:08d}", frame=frame)
            if self.is_file:
                self._submit_waiting(job)
            elif (
                self.models.active is None or self.pipeline.blocked_reason() or not self.pipeline.submit(job)
            ):
                self._dropped()
            else:
                self.frames_submitted += 1

    def _submit_waiting(self, job: Job) -> None:
        """A video file waits for a model, an open intake and room in the queue."""
        while not self._stop.is_set() and not self.pipeline.closing:
            if self.models.active is not None and not self.pipeline.blocked_reason():
                if self.pipeline.submit(job, timeout=0.5):
                    self.frames_submitted += 1
                    return
            else:
                self._stop.wait(0.5)

    def _dropped(self) -> None:
        self.frames_dropped += 1
        if self.frames_dropped % DROP_LOG_EVERY == 1:
            log.warning(
                kv(
                    "camera_frames_dropped",
                    source=self.config.source,
                    dropped=self.frames_dropped,
                    reason="pipeline full, no model or intake paused",
                )
            )
