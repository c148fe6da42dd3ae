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

Fields: when the model's manifest has a ``cells`` section the image's size says what it is
(:mod:`agents.cells.kinds`; a kind the model does not accept ends as ``BAD_IMAGE`` saying why). A
field's white cells are found and each is cropped and preprocessed like a single-cell image
(:mod:`agents.cells.prepare`), then every crop is submitted at once (the backend's requests bound
them, as for images); the field reaches the writer once, when its last crop is in
(:mod:`agents.cells.gather`), and is decided per field (:mod:`agents.results`). A field is one
job, one result, one outbox row and one ``on_done`` call, exactly like an image.

Each job carries its source's hook, ``on_done``, called exactly once with the :class:`Outcome`; the
source owns what happens to its input then (the watch folder moves the file to ``done`` or, with the
reason, to ``failed``; the HTTP endpoint answers the request). The pipeline knows no source: it only
reads ``job.path`` and journals it with the result (see below).

Model swaps: a decode thread acquires the active model *before* preprocessing (the crop size comes
from its manifest) and the writer (:mod:`agents.writer`) releases it after the result is built, once
per image or field. An image, or every cell of a field, is therefore classified entirely by one
model, and the model manager closes an old backend only when its last image is through. Nothing is
dropped during a swap.

Nothing is lost: the result of a job with a ``path`` is committed together with a move journal
entry for that file (see :mod:`agents.outbox`) before its ``on_done`` may move the file, and a file
whose journalled result is already committed ends as ``ALREADY_DONE`` instead of being classified
again. When the outbox refuses a write, reaches its cap, or the disk runs low,
:meth:`Pipeline.blocked_reason` says so (loudly, in the log; :mod:`agents.gate`) and sources stop
taking images until it clears; images waiting in the watch folder are the buffer.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Histogram

from agents.backends import BackendError, Inference
from agents.cells.gather import FieldGather
from agents.cells.kinds import KindRefused, input_kind
from agents.cells.prepare import prepare_field
from agents.config import OutboxConfig, PipelineConfig
from agents.evidence.preview import EvidenceMaker
from agents.gate import IntakeGate
from agents.jobs import Finished, InFlight, Job, Outcome, OutcomeKind
from agents.models import ActiveModel, ModelManager
from agents.outbox import Outbox
from agents.specimen import SpecimenRule
from agents.vitals import InferenceStats
from agents.writer import LOOP as WRITER_LOOP
from agents.writer import ResultWriter
from shared.cells.spec import InputKind
from shared.logs import kv
from shared.loops import Loops
from shared.preprocessing import ImageDecodeError, crop_and_resize, decode_image

log = logging.getLogger(__name__)


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
        evidence: EvidenceMaker | None = None,
        specimens: SpecimenRule | None = None,
    ) -> None:
        self.agent_id, self.lab = agent_id, lab
        self.evidence, self.specimens = evidence, specimens
        self.threshold = low_confidence_threshold
        self.models, self.outbox, self.stats = models, outbox, stats
        self.config, self.limits = config, limits
        self.state_dir = state_dir
        self._notify = notify or (lambda: None)
        self.loops = loops or Loops()
        size = config.queue_size or max(4 * config.decode_threads, 2 * max(1, config.infer_requests) + 4, 16)
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=size)
        self._room = threading.Event()
        self._pending = 0  # jobs accepted by submit() and not finished yet
        self._pending_lock = threading.Lock()
        self.gate = IntakeGate(outbox, limits, state_dir)
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._outcomes: Counter[OutcomeKind] = Counter()  # jobs by outcome, for agents.metrics
        self.writer = ResultWriter(
            agent_id,
            lab,
            low_confidence_threshold,
            models,
            outbox,
            stats,
            self.gate,
            config.commit_batch,
            self._notify,
            self._finish,
            self.loops,
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the decode threads and the writer thread."""
        for i in range(self.config.decode_threads):
            name = f"decode-{i}"
            self._threads.append(self.loops.spawn(name, partial(self._decode_loop, name), self._closing))
        self._writer = self.loops.spawn(WRITER_LOOP, self.writer.run, self._closing)

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
        self.writer.wait_idle(timeout)
        self.writer.stop()
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

    def analysis(self) -> dict[str, int]:
        """Committed ``fields``, ``cells`` classified in them, and ``unfamiliar`` results (a copy)."""
        return self.writer.analysis()

    @property
    def inference_seconds(self) -> Histogram:
        """Inference time per classified image (a field: the wall span of its crops)."""
        return self.writer.inference_seconds

    def blocked_reason(self) -> str:
        """Why sources must not take images now ('' when they may): see :class:`agents.gate.IntakeGate`."""
        return self.gate.blocked_reason()

    @property
    def error_backoff_s(self) -> float:
        """How long intake pauses after an inference or outbox error."""
        return self.gate.error_backoff_s

    @error_backoff_s.setter
    def error_backoff_s(self, seconds: float) -> None:
        self.gate.error_backoff_s = seconds

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
        """Decode ``job``, preprocess it as its kind, hand it to ``active``; True when inference started."""
        t0 = time.perf_counter()
        loaded = self._decode(job)
        if loaded is None:
            return False
        image, sha, data = loaded
        decode_ms = (time.perf_counter() - t0) * 1e3
        if image.ndim != 3 or image.shape[2] != 3:  # e.g. a single-channel camera frame
            error = f"{job.name}: expected an [H, W, 3] image, got shape {image.shape}"
            self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=error))
            return False
        try:
            kind = input_kind(active.manifest, job.name, image.shape[1], image.shape[0])
        except KindRefused as exc:
            self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=str(exc)))
            return False
        extras = self._extras(job, image, sha, data)
        if kind is InputKind.FIELD:
            return self._submit_field(job, active, image, sha, decode_ms, extras)
        t1 = time.perf_counter()
        spec = active.manifest.preprocessing
        crop = crop_and_resize(image, spec.image_size, spec.central_fraction)
        ctx = InFlight(job, active, sha, decode_ms, (time.perf_counter() - t1) * 1e3, kind, **extras)
        self.writer.started()
        try:
            active.backend.submit(crop, partial(self._inferred, ctx))
        except BackendError as exc:
            self.writer.abandoned()
            self.writer.inference_failed(job, active, exc)
            return False
        return True

    def _extras(self, job: Job, image: np.ndarray, sha: str, data: bytes | None) -> dict[str, Any]:
        """The image's evidence (``evidence`` config) and specimen id (``specimen.pattern``)."""
        return {
            "evidence": self.evidence.make(sha, image, data, job.name) if self.evidence else None,
            "specimen_id": self.specimens.specimen_id(job.name, job.path) if self.specimens else None,
        }

    def _decode(self, job: Job) -> tuple[np.ndarray, str, bytes | None] | None:
        """``job``'s image, the sha256 of its bytes and the bytes (None for a camera frame); None when
        the job ended here (gone, done, bad)."""
        if job.frame is not None:
            return job.frame, hashlib.sha256(np.ascontiguousarray(job.frame).tobytes()).hexdigest(), None
        if job.data is not None:
            data = job.data
        else:
            assert job.path is not None
            try:
                data = job.path.read_bytes()
            except FileNotFoundError:
                self._finish(job, Outcome(OutcomeKind.GONE, error=f"{job.path} disappeared"))
                return None
        sha = hashlib.sha256(data).hexdigest()
        if job.path is not None and self._committed_before(job.path, sha):
            self._finish(job, Outcome(OutcomeKind.ALREADY_DONE))
            return None
        try:
            return decode_image(data, job.name, self.config.max_pixels), sha, data
        except ImageDecodeError as exc:
            self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=str(exc)))
            return None

    def _submit_field(
        self,
        job: Job,
        active: ActiveModel,
        image: np.ndarray,
        sha: str,
        decode_ms: float,
        extras: dict[str, Any],
    ) -> bool:
        """Find the field's cells and submit all their crops; True (the writer releases the model)
        unless the field ended before any inference."""
        cells = active.manifest.cells
        assert cells is not None  # input_kind() said FIELD
        t1 = time.perf_counter()
        try:
            prepared = prepare_field(image, cells.finder, active.manifest.preprocessing)
        except ValueError as exc:  # e.g. 16-bit camera frames: the finder takes uint8 only
            self._finish(job, Outcome(OutcomeKind.BAD_IMAGE, error=f"{job.name}: {exc}"))
            return False
        prep_ms = (time.perf_counter() - t1) * 1e3
        ctx = InFlight(
            job,
            active,
            sha,
            decode_ms,
            prep_ms,
            InputKind.FIELD,
            prepared.boxes,
            prepared.found,
            prepared.finder_ms,
            **extras,
        )
        if prepared.found > len(prepared.boxes):
            log.info(
                kv("field_cells_capped", image=job.name, found=prepared.found, classified=len(prepared.boxes))
            )
        self.writer.started()
        gather = FieldGather(len(prepared.boxes), partial(self._field_inferred, ctx))
        submitted = 0
        try:
            for crop in prepared.crops:
                active.backend.submit(crop, partial(gather.done, submitted))
                submitted += 1
        except Exception as exc:  # noqa: BLE001 - the crops in flight are waited for, then the field fails
            gather.seal(submitted, exc)
            return True
        gather.seal(submitted)
        return True

    def _committed_before(self, path: Path, sha: str) -> bool:
        """Whether the move journal holds a committed result for exactly these bytes at ``path``."""
        journal = self.outbox.pending_move(path)
        return journal is not None and journal.image_sha256 == sha

    def _inferred(
        self, ctx: InFlight, inference: Inference | None, ms: float, error: BaseException | None
    ) -> None:
        """Backend callback of an image (any thread): hand over to the writer. Never raises."""
        self.writer.put(Finished(ctx, [] if inference is None else [inference], ms, error))

    def _field_inferred(
        self, ctx: InFlight, inferences: list[Inference], ms: float, error: BaseException | None
    ) -> None:
        """A field's last crop is in (any thread): hand the field over to the writer. Never raises."""
        self.writer.put(Finished(ctx, inferences, ms, error))

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
