"""The classification pipeline: decode threads feed asynchronous inference, a writer commits results.

::

    sources --submit(Job)--> [bounded queue] --> decode threads --backend.submit--> infer requests
                                                                                      | callback
    job.on_done(outcome) <-- results committed to the outbox (one transaction) <-- writer thread

Every image, whatever its source (watch folder, HTTP upload, camera frame), takes the same path:
read + sha256 + decode (skipped for camera frames) + ``crop_and_resize`` in one of
``decode_threads`` threads, then :meth:`agents.backends.Backend.submit`, which returns as soon as an
infer request took the image. Decoding the next images therefore overlaps inference, and the
backend blocks the decode threads only when every request is busy (back-pressure). The writer
thread groups finished images into one outbox transaction (``commit_batch``), then tells each job's
``on_done`` what happened.

Each job carries its source's hook, ``on_done``, called exactly once with the :class:`Outcome`; the
source owns what happens to its input then (the watch folder moves the file to ``done`` or, with the
reason, to ``failed``; the HTTP endpoint answers the request). The pipeline knows no source: it only
reads ``job.path`` and journals it with the result (see below).

Model swaps: a decode thread acquires the active model *before* preprocessing (the crop size comes
from its manifest) and the writer releases it after the result is built. An image is therefore
classified entirely by one model, and the model manager closes an old backend only when its last
image is through. Nothing is dropped during a swap.

Nothing is lost: the result of a job with a ``path`` is committed together with a move journal
entry for that file (see :mod:`agents.outbox`) before its ``on_done`` may move the file, and a file
whose journalled result is already committed ends as ``ALREADY_DONE`` instead of being classified
again. When the outbox refuses a write, reaches its cap, or the disk runs low,
:meth:`Pipeline.blocked_reason` says so (loudly, in the log) and sources stop taking images until it
clears; images waiting in the watch folder are the buffer.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from prometheus_client import Histogram

from agents.backends import BackendError
from agents.config import OutboxConfig, PipelineConfig
from agents.jobs import Finished, InFlight, Job, Outcome, OutcomeKind, build_result
from agents.models import ActiveModel, ModelManager
from agents.outbox import Outbox, OutboxError
from agents.vitals import InferenceStats
from shared.logs import kv
from shared.loops import Loops
from shared.preprocessing import ImageDecodeError, crop_and_resize, decode_image
from shared.schemas import ClassificationResult

log = logging.getLogger(__name__)

ERROR_BACKOFF_S = 5.0
DISK_CHECK_INTERVAL_S = 1.0


class Pipeline:
    """Classifies :class:`Job` s into the outbox. ``start()`` the threads, ``close()`` drains them.

    Args:
        agent_id, lab: stamped on every result.
        low_confidence_threshold: results below it carry ``low_confidence=True``.
        models: gives the active model (acquired per image).
        outbox: where results are committed (with the move journal of jobs that have a ``path``).
        stats: receives each image's inference time.
        config, limits: the ``pipeline`` and ``outbox`` config sections.
        state_dir: its disk's free space is watched (``limits.min_free_disk_mb``).
        notify: called after each commit (wakes the MQTT outbox pump).
    """

    def __init__(
        self,
        agent_id: str,
        lab: str,
        low_confidence_threshold: float,
        models: ModelManager,
        outbox: Outbox,
        stats: InferenceStats,
        config: PipelineConfig,
        limits: OutboxConfig,
        state_dir: Path,
        notify: Callable[[], None] | None = None,
        loops: Loops | None = None,
    ) -> None:
        self.agent_id, self.lab = agent_id, lab
        self.threshold = low_confidence_threshold
        self.models, self.outbox, self.stats = models, outbox, stats
        self.config, self.limits = config, limits
        self.state_dir = state_dir
        self._notify = notify or (lambda: None)
        self.loops = loops or Loops()
        size = config.queue_size or max(4 * config.decode_threads, 2 * max(1, config.infer_requests) + 4, 16)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=size)
        self._finished: queue.SimpleQueue[Finished | None] = queue.SimpleQueue()
        self._room = threading.Event()
        self._idle = threading.Condition()
        self._inflight = 0  # images between backend.submit and the writer
        self._pending = 0  # jobs accepted by submit() and not finished yet
        self._pending_lock = threading.Lock()
        self._gate_lock = threading.Lock()
        self.error_backoff_s = ERROR_BACKOFF_S
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._paused_until = 0.0
        self._pause_reason = ""
        self._disk_checked_at = -1e9
        self._disk_low = ""
        self._alarm_reason = ""
        self._alarm_at = 0.0
        # for agents.metrics: jobs by outcome, and a histogram no registry owns (as the hub's IngestStats)
        self._outcomes: Counter[OutcomeKind] = Counter()
        self.inference_seconds = Histogram(
            "leukonet_agent_inference_seconds", "Inference time per classified image", registry=None
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode threads and the writer thread."""
        for i in range(self.config.decode_threads):
            name = f"decode-{i}"
            self._threads.append(self.loops.spawn(name, partial(self._decode_loop, name), self._closing))
        self._writer = self.loops.spawn("outbox-writer", self._write_loop, self._closing)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs, finish the images already in inference, stop the threads.

        Jobs still queued get ``STOPPED`` (watch-folder files simply stay in the folder).
        """
        self._closing.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._finish(job, Outcome(OutcomeKind.STOPPED, error="the agent is stopping"))
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        with self._idle:
            self._idle.wait_for(lambda: self._inflight == 0, timeout)
        self._finished.put(None)
        if self._threads:
            self._writer.join(timeout)
        self._threads.clear()

    # --- intake -------------------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def room(self) -> int:
        """Jobs :meth:`submit` takes right now: free queue slots, bounded by what the outbox cap leaves."""
        if self._closing.is_set():
            return 0
        return max(min(self._queue.maxsize - self._queue.qsize(), self._cap_left()), 0)

    def _cap_left(self) -> int:
        with self._pending_lock:
            return self.limits.max_rows - self.outbox.depth() - self._pending

    def wait_for_room(self, timeout: float) -> None:
        """Block until a decode thread took a job (or ``timeout``)."""
        self._room.wait(timeout)
        self._room.clear()

    def submit(self, job: Job, timeout: float | None = 0.0) -> bool:
        """Queue ``job``; False when the queue stayed full for ``timeout`` s (None: wait), when the job
        would take the outbox over ``outbox.max_rows`` (results committed + jobs under way), or when
        the pipeline is closing. Every accepted job gets exactly one ``on_done`` call.
        """
        if self._closing.is_set():
            return False
        with self._pending_lock:
            if self.outbox.depth() + self._pending >= self.limits.max_rows:
                return False
            self._pending += 1
        try:
            if timeout == 0.0:
                self._queue.put_nowait(job)
            else:
                self._queue.put(job, timeout=timeout)
        except queue.Full:
            with self._pending_lock:
                self._pending -= 1
            return False
        return True

    def outcomes(self) -> dict[OutcomeKind, int]:
        """Jobs finished since start, by outcome (a copy)."""
        with self._pending_lock:
            return dict(self._outcomes)

    def blocked_reason(self) -> str:
        """Why sources must not take images now ('' when they may): outbox cap, low disk, errors.

        Logs an error when a reason appears and repeats it every ``alarm_interval_s`` while it lasts.
        """
        with self._gate_lock:
            return self._blocked_reason()

    def _blocked_reason(self) -> str:
        now = time.monotonic()
        reason = ""
        depth = self.outbox.depth()
        if depth >= self.limits.max_rows:
            reason = (
                f"outbox full: {depth} results wait for the broker (cap outbox.max_rows="
                f"{self.limits.max_rows}); new images wait until the broker acknowledges results"
            )
        elif self.limits.min_free_disk_mb > 0:
            if now - self._disk_checked_at >= DISK_CHECK_INTERVAL_S:
                self._disk_checked_at = now
                free_mb = shutil.disk_usage(self.state_dir).free / 2**20
                self._disk_low = (
                    f"disk almost full: {free_mb:.0f} MB free on {self.state_dir} "
                    f"(< outbox.min_free_disk_mb={self.limits.min_free_disk_mb:g}); free space to resume"
                    if free_mb < self.limits.min_free_disk_mb
                    else ""
                )
            reason = self._disk_low
        if not reason and now < self._paused_until:
            reason = self._pause_reason
        self._alarm(reason, now)
        return reason

    def _alarm(self, reason: str, now: float) -> None:
        if reason and (reason != self._alarm_reason or now - self._alarm_at >= self.limits.alarm_interval_s):
            log.error(kv("intake_paused", reason=reason, outbox_depth=self.outbox.depth()))
            self._alarm_at = now
        elif not reason and self._alarm_reason:
            log.warning(kv("intake_resumed", previous_reason=self._alarm_reason))
        self._alarm_reason = reason

    def _pause(self, reason: str) -> None:
        self._paused_until = time.monotonic() + self.error_backoff_s
        self._pause_reason = f"{reason} (retrying in {self.error_backoff_s:g} s)"

    # --- decode stage -------------------------------------------------------------------------

    def _decode_loop(self, name: str) -> None:
        while True:
            job = self._queue.get()
            self._room.set()
            if job is None:
                return
            try:
                self._start(job)
            except Exception as exc:  # noqa: BLE001 - one file must never stop a decode thread
                self._unexpected(job, exc)
            self.loops.beat(name)

    def _unexpected(self, job: Job, exc: BaseException) -> None:
        """An error nothing else handled: counted, logged once, the job ends as a bad image with why."""
        self.stats.count_error("decode_unexpected")
        reason = f"{job.name}: unexpected error while preparing the image: {exc!r}"[:1000]
        log.exception(kv("decode_failed", image=job.name, error=repr(exc)[:300]))
        self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=reason))

    def _start(self, job: Job) -> None:
        active = self.models.acquire()
        if active is None:
            self._finish(job, Outcome(OutcomeKind.NO_MODEL, error="no model is active yet"))
            return
        started = False
        try:
            started = self._prepare_and_submit(job, active)
        finally:
            if not started:
                self.models.release(active)

    def _prepare_and_submit(self, job: Job, active: ActiveModel) -> bool:
        """Decode + preprocess ``job`` and hand it to ``active``; True when inference started."""
        t0 = time.perf_counter()
        if job.frame is not None:
            image = job.frame
            sha = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
        else:
            if job.data is not None:
                data = job.data
            else:
                assert job.path is not None
                try:
                    data = job.path.read_bytes()
                except FileNotFoundError:
                    self._finish(job, Outcome(OutcomeKind.GONE, error=f"{job.path} disappeared"))
                    return False
            sha = hashlib.sha256(data).hexdigest()
            if job.path is not None and self._committed_before(job.path, sha):
                self._finish(job, Outcome(OutcomeKind.ALREADY_DONE))
                return False
            try:
                image = decode_image(data, job.name, self.config.max_pixels)
            except ImageDecodeError as exc:
                self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=str(exc)))
                return False
        t1 = time.perf_counter()
        spec = active.manifest.preprocessing
        try:
            crop = crop_and_resize(image, spec.image_size, spec.central_fraction)
        except ValueError as exc:  # e.g. a single-channel camera frame
            self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=f"{job.name}: {exc}"))
            return False
        t2 = time.perf_counter()
        ctx = InFlight(job, active, sha, (t1 - t0) * 1e3, (t2 - t1) * 1e3)
        with self._idle:
            self._inflight += 1
        try:
            active.backend.submit(crop, partial(self._inferred, ctx))
        except BackendError as exc:
            with self._idle:
                self._inflight -= 1
                self._idle.notify_all()
            self._inference_failed(job, active, exc)
            return False
        return True

    def _committed_before(self, path: Path, sha: str) -> bool:
        """Whether the move journal holds a committed result for exactly these bytes at ``path``."""
        journal = self.outbox.pending_move(path)
        return journal is not None and journal.image_sha256 == sha

    def _inferred(
        self, ctx: InFlight, probs: np.ndarray | None, ms: float, error: BaseException | None
    ) -> None:
        """Backend callback (any thread): hand over to the writer. Never raises."""
        self._finished.put((ctx, probs, ms, error))

    def _inference_failed(self, job: Job, active: ActiveModel, exc: BaseException) -> None:
        self._pause(f"inference failed on {active.name} {active.version}: {exc}")
        log.error(
            kv("inference_failed", model=active.name, version=active.version, image=job.name, error=exc)
        )
        self._finish(job, Outcome(OutcomeKind.UNAVAILABLE, error=f"inference failed: {exc}"))

    # --- write stage --------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._finished.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.config.commit_batch:
                try:
                    more = self._finished.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._commit(batch)
                self.loops.beat("outbox-writer")
            except Exception as exc:  # noqa: BLE001 - the writer must outlive a bug in one batch
                log.exception(kv("commit_failed", images=len(batch), error=exc))
                self._pause(f"internal error while storing results: {exc}")
                for ctx, _, _, _ in batch:
                    self._finish(ctx.job, Outcome(OutcomeKind.UNAVAILABLE, error=str(exc)))
            finally:
                with self._idle:
                    self._inflight -= len(batch)
                    self._idle.notify_all()
            if stop:
                return

    def _commit(self, batch: list[Finished]) -> None:
        ready: list[tuple[InFlight, ClassificationResult, float]] = []
        for ctx, probs, ms, error in batch:
            self.models.release(ctx.active)
            if error is not None or probs is None:
                self._inference_failed(ctx.job, ctx.active, error or BackendError("no output"))
                continue
            ready.append((ctx, build_result(ctx, probs, ms, self.agent_id, self.lab, self.threshold), ms))
        if not ready:
            return
        try:
            self.outbox.put_many([(result, ctx.job.path) for ctx, result, _ in ready])
        except OutboxError as exc:
            self._pause(str(exc))
            log.error(kv("outbox_write_failed", results=len(ready), error=exc))
            for ctx, _, _ in ready:
                self._finish(ctx.job, Outcome(OutcomeKind.UNAVAILABLE, error=str(exc)))
            return
        self._notify()
        for ctx, result, ms in ready:
            self.stats.record(ms)
            self.inference_seconds.observe(ms / 1e3)
            log.info(
                kv(
                    "classified",
                    image=result.image_name,
                    label=result.label,
                    confidence=f"{result.confidence:.3f}",
                    model=f"{result.model_name}-{result.model_version}",
                    ms=f"{result.timings.total_ms:.1f}",
                )
            )
            self._finish(ctx.job, Outcome(OutcomeKind.CLASSIFIED, result=result))

    def _finish(self, job: Job, outcome: Outcome) -> None:
        with self._pending_lock:
            if job.finished:
                return
            job.finished = True
            self._pending -= 1
            self._outcomes[outcome.kind] += 1
        if job.on_done is None:
            return
        try:
            job.on_done(outcome)
        except Exception as exc:  # noqa: BLE001 - a source's hook must not kill a pipeline thread
            log.exception(kv("job_callback_failed", image=job.name, error=exc))
