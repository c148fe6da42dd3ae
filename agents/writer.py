"""The pipeline's write stage: results built from inferred images and fields, committed in batches.

One thread (``outbox-writer``) takes :class:`~agents.jobs.Finished` items as the backends' callbacks
hand them over, builds each result (:func:`agents.results.build_result`), commits up to
``commit_batch`` results in one outbox transaction (with the move journal of jobs that have a
``path``), and only then finishes their jobs. It releases each image's model lease once its result
is built (once per field too). An image whose outputs make no valid result, or whose inference
failed, ends ``UNAVAILABLE`` with the reason; the rest of its batch is unaffected.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable

from prometheus_client import Histogram

from agents.backends import BackendError
from agents.gate import IntakeGate
from agents.jobs import Finished, Job, Outcome, OutcomeKind
from agents.models import ActiveModel, ModelManager
from agents.outbox import Outbox, OutboxError
from agents.results import build_result
from agents.vitals import InferenceStats
from shared.cells.spec import InputKind
from shared.logs import kv
from shared.loops import Loops
from shared.schemas import ClassificationResult

log = logging.getLogger(__name__)

LOOP = "outbox-writer"
#: what :meth:`ResultWriter.analysis` counts
ANALYSIS = ("fields", "cells", "unfamiliar")

FinishFn = Callable[[Job, Outcome], None]


class ResultWriter:
    """Builds and commits results; counts the images between ``backend.submit`` and the commit.

    Args:
        agent_id, lab: stamped on every result.
        threshold: results below it carry ``low_confidence=True``.
        models: each finished image's model lease is released here.
        outbox, stats, gate: where results go, what records inference times, what pauses intake.
        commit_batch: most results per outbox transaction.
        notify: called after each commit (wakes the MQTT outbox pump).
        finish: ends a job with its outcome (the pipeline's, called once per job).
        loops: the writer thread's heartbeat goes there.
    """

    def __init__(
        self,
        agent_id: str,
        lab: str,
        threshold: float,
        models: ModelManager,
        outbox: Outbox,
        stats: InferenceStats,
        gate: IntakeGate,
        commit_batch: int,
        notify: Callable[[], None],
        finish: FinishFn,
        loops: Loops,
    ) -> None:
        self.agent_id, self.lab, self.threshold = agent_id, lab, threshold
        self.models, self.outbox, self.stats, self.gate = models, outbox, stats, gate
        self.commit_batch = commit_batch
        self._notify, self._finish, self.loops = notify, finish, loops
        self._queue: queue.SimpleQueue[Finished | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._inflight = 0  # images and fields between backend.submit and their commit
        self._lock = threading.Lock()
        self._analysis: Counter[str] = Counter()
        # a histogram no registry owns (as the hub's IngestStats); agents.metrics reads it
        self.inference_seconds = Histogram(
            "leukonet_agent_inference_seconds", "Inference time per classified image", registry=None
        )

    # --- what the decode stage and the callbacks call ----------------------------------------

    def started(self) -> None:
        """An image or field goes into inference: the writer will see it (or :meth:`abandoned`)."""
        with self._idle:
            self._inflight += 1

    def abandoned(self) -> None:
        """The image announced by :meth:`started` never reached the backend."""
        self._written(1)

    def put(self, item: Finished) -> None:
        """Hand a finished image or field over (any thread; never blocks, never raises)."""
        self._queue.put(item)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every started image is committed or failed; False after ``timeout``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def stop(self) -> None:
        """Let the thread end once everything handed over before is written."""
        self._queue.put(None)

    def analysis(self) -> dict[str, int]:
        """Committed ``fields``, ``cells`` classified in them, and ``unfamiliar`` results (a copy)."""
        with self._lock:
            return {k: self._analysis.get(k, 0) for k in ANALYSIS}

    def inference_failed(self, job: Job, active: ActiveModel, exc: BaseException) -> None:
        """``job``'s inference failed: intake pauses, the job ends ``UNAVAILABLE`` (tried again later)."""
        self.gate.pause(f"inference failed on {active.name} {active.version}: {exc}")
        log.error(
            kv("inference_failed", model=active.name, version=active.version, image=job.name, error=exc)
        )
        self._finish(job, Outcome(OutcomeKind.UNAVAILABLE, error=f"inference failed: {exc}"))

    # --- the thread ---------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stop = False
            while len(batch) < self.commit_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            try:
                self._commit(batch)
                self.loops.beat(LOOP)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive a bug in one batch
                log.exception(kv("commit_failed", images=len(batch), error=exc))
                self.gate.pause(f"internal error while storing results: {exc}")
                for done in batch:
                    self._finish(done.ctx.job, Outcome(OutcomeKind.UNAVAILABLE, error=str(exc)))
            finally:
                self._written(len(batch))
            if stop:
                return

    def _written(self, n: int) -> None:
        with self._idle:
            self._inflight -= n
            self._idle.notify_all()

    def _result(self, done: Finished) -> ClassificationResult | None:
        """``done``'s result, or None when it failed (its job is finished then, with the reason)."""
        ctx = done.ctx
        try:
            if done.error is not None or (not done.inferences and ctx.kind is not InputKind.FIELD):
                self.inference_failed(ctx.job, ctx.active, done.error or BackendError("no output"))
                return None
            return build_result(done, self.agent_id, self.lab, self.threshold)
        except Exception as exc:  # noqa: BLE001 - one image's outputs must not fail the others
            self.stats.count_error("result_invalid")
            log.exception(kv("result_failed", image=ctx.job.name, error=repr(exc)[:300]))
            error = f"{ctx.job.name}: the model's outputs make no valid result: {exc}"[:1000]
            self._finish(ctx.job, Outcome(OutcomeKind.UNAVAILABLE, error=error))
            return None
        finally:
            self.models.release(ctx.active)

    def _commit(self, batch: list[Finished]) -> None:
        ready: list[tuple[Finished, ClassificationResult]] = []
        for done in batch:
            result = self._result(done)
            if result is not None:
                ready.append((done, result))
        if not ready:
            return
        try:
            self.outbox.put_many(
                [(result, done.ctx.job.path) for done, result in ready],
                evidence=[done.ctx.evidence for done, _ in ready],
            )
        except OutboxError as exc:
            self.gate.pause(str(exc))
            log.error(kv("outbox_write_failed", results=len(ready), error=exc))
            for done, _ in ready:
                self._finish(done.ctx.job, Outcome(OutcomeKind.UNAVAILABLE, error=str(exc)))
            return
        self._notify()
        for done, result in ready:
            self._count(done, result)
            self._finish(done.ctx.job, Outcome(OutcomeKind.CLASSIFIED, result=result))

    def _count(self, done: Finished, result: ClassificationResult) -> None:
        ms = done.inference_ms
        self.stats.record(ms)
        self.inference_seconds.observe(ms / 1e3)
        field = result.input_kind is InputKind.FIELD
        with self._lock:
            self._analysis["fields"] += field
            self._analysis["cells"] += len(done.inferences) if field else 0
            self._analysis["unfamiliar"] += result.unfamiliar
        extra = {"cells": len(done.inferences), "finder_ms": f"{done.ctx.finder_ms:.1f}"} if field else {}
        log.info(
            kv(
                "classified",
                image=result.image_name,
                kind=result.input_kind.value if result.input_kind else "whole",
                label=result.label,
                confidence=f"{result.confidence:.3f}",
                unfamiliar=result.unfamiliar,
                model=f"{result.model_name}-{result.model_version}",
                ms=f"{result.timings.total_ms:.1f}",
                **extra,
            )
        )
