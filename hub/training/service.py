"""Training jobs: queue, claim, progress, finish, fail, cancel, and the heartbeat timeout.

States (:data:`shared.training.JOB_STATES`)::

    queued --claim--> running --finish--------------> succeeded
       |                 |------fail----------------> failed
       |                 +------fail(cancelled)-----> cancelled  (after an operator asked)
       +--cancel------------------------------------> cancelled

A job changes state only through a conditional ``UPDATE ... WHERE state = <expected>`` whose row
count says whether this caller won. Two trainers claiming at once therefore never get the same
job, and an operator's cancel never overwrites a claim that committed first, on SQLite and
PostgreSQL alike, without row locks.

Trainers name themselves (the ``worker`` of :class:`~shared.training.ClaimRequest`); only the
worker holding a running job may report on it. A worker that claims while it still holds a running
job has restarted, so that job is failed first (cancelled if an operator had asked for that). A
running job whose trainer has not reported for ``training.heartbeat_timeout_s`` is failed by
:meth:`TrainingJobs.expire_stale`, which listing, showing and claiming call first (lazily, no
thread). Operator and trainer actions go to the audit log; the hub's own decisions under the
actor ``engine``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub import audit
from hub.config import TrainingSection
from hub.db.models import TrainingJob
from hub.db.session import Database
from hub.registry.service import ModelRegistry, RegistryError
from hub.training.rows import TrainingError, apply, find, held, held_update
from shared.clock import Clock, utcnow
from shared.logs import kv
from shared.training import ACTIVE_STATES, JobFailure, JobFinish, JobProgress, JobState, TrainingJobSpec

log = logging.getLogger(__name__)

CLAIM_CANDIDATES = 8  # oldest queued jobs tried per round; another claimer may win any of them
CLAIM_ROUNDS = 20


def subject(job_id: str) -> str:
    """The audit-log subject of a job."""
    return f"training-job/{job_id}"


class TrainingJobs:
    """The job queue and state machine; see the module docstring for the rules.

    Args:
        db: the hub database.
        registry: where a finished job's bundle must be registered.
        settings: the ``training`` config section (heartbeat timeout).
        clock: returns the current UTC time (tests inject a fake one).
    """

    def __init__(
        self, db: Database, registry: ModelRegistry, settings: TrainingSection, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.registry = registry
        self.settings = settings
        self.clock = clock

    # --- operators --------------------------------------------------------------------------
    def queue(self, spec: TrainingJobSpec, actor: str) -> TrainingJob:
        """Queue a job producing ``spec.name`` ``spec.version``.

        Raises:
            TrainingError: 409 ``model_exists`` when that version is already registered, 409
                ``job_exists`` when a queued or running job already produces it.
        """
        if self._registered(spec.name, spec.version):
            raise TrainingError(
                409,
                "model_exists",
                f"model {spec.name} {spec.version} is already registered; queue the job with a new "
                "version (the trainer publishes under this name and version)",
            )
        now = self.clock()
        job = TrainingJob(
            job_id=str(uuid.uuid4()),
            state=JobState.QUEUED,
            model_name=spec.name,
            model_version=spec.version,
            spec=spec.model_dump(mode="json"),
            cancel_requested=False,
            created_by=actor,
            created_at=now,
        )
        try:
            with self.db.transaction() as s:
                active = s.scalar(
                    select(TrainingJob).where(
                        TrainingJob.model_name == spec.name,
                        TrainingJob.model_version == spec.version,
                        TrainingJob.state.in_(ACTIVE_STATES),
                    )
                )
                if active is not None:
                    raise self._duplicate(spec, active.job_id, active.state)
                s.add(job)
                audit.record(
                    s,
                    actor,
                    "training.queue",
                    subject(job.job_id),
                    now,
                    model=f"{spec.name} {spec.version}",
                    dataset=spec.dataset,
                    mode=spec.mode,
                    steps=spec.steps,
                )
        except IntegrityError as exc:  # a concurrent queue of the same version won the unique index
            raise self._duplicate(spec, None, None) from exc
        log.info(
            kv(
                "training_job_queued",
                job=job.job_id,
                model=f"{spec.name} {spec.version}",
                dataset=spec.dataset,
                mode=spec.mode,
                by=actor,
            )
        )
        return job

    @staticmethod
    def _duplicate(spec: TrainingJobSpec, job_id: str | None, state: str | None) -> TrainingError:
        which = f"training job {job_id} ({state})" if job_id else "another queued or running training job"
        return TrainingError(
            409,
            "job_exists",
            f"{which} already produces model {spec.name} {spec.version}; cancel it or choose another version",
        )

    def cancel(self, job_id: str, actor: str) -> TrainingJob:
        """Cancel a queued job at once, or ask the trainer of a running one to stop.

        A running job only gets ``cancel_requested``; its trainer sees that in the answer to its
        next progress report and ends the job with a cancelled failure. Asking again is harmless.

        Raises:
            TrainingError: 404 unknown job; 409 the job already ended.
        """
        now = self.clock()
        with self.db.transaction() as s:
            cancelled = apply(
                s,
                update(TrainingJob)
                .where(TrainingJob.job_id == job_id, TrainingJob.state == JobState.QUEUED)
                .values(
                    state=JobState.CANCELLED,
                    finished_at=now,
                    error=f"cancelled by {actor} before a trainer claimed it",
                ),
            )
            if not cancelled:
                requested = apply(
                    s,
                    update(TrainingJob)
                    .where(TrainingJob.job_id == job_id, TrainingJob.state == JobState.RUNNING)
                    .values(cancel_requested=True),
                )
                if not requested:
                    job = find(s, job_id)
                    raise TrainingError(
                        409,
                        "invalid_state",
                        f"training job {job_id} is {job.state}; only queued or running jobs can be cancelled",
                    )
            job = find(s, job_id)
            audit.record(s, actor, "training.cancel", subject(job_id), now, state=job.state)
        log.info(kv("training_job_cancel", job=job_id, state=job.state, by=actor))
        return job

    # --- reads ------------------------------------------------------------------------------
    def get(self, job_id: str) -> TrainingJob:
        """One job, after failing stale running jobs. Raises TrainingError 404 when unknown."""
        self.expire_stale()
        with self.db.session() as s:
            return find(s, job_id)

    def list_jobs(self, state: str | None = None, limit: int = 100) -> list[TrainingJob]:
        """Newest first, optionally only those in ``state``, after failing stale running jobs."""
        self.expire_stale()
        with self.db.session() as s:
            q = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)
            if state:
                q = q.where(TrainingJob.state == state)
            return list(s.scalars(q))

    # --- trainers ---------------------------------------------------------------------------
    def claim(self, worker: str, actor: str) -> TrainingJob | None:
        """Move the oldest queued job to running for ``worker``; None when nothing is queued.

        A job ``worker`` still holds is ended first (the trainer restarted and lost it).

        Raises:
            TrainingError: 503 ``claim_contention`` when other trainers won every candidate for
                :data:`CLAIM_ROUNDS` rounds (retry).
        """
        self.expire_stale()
        now = self.clock()
        self._release(worker, now)
        claimed: TrainingJob | None = None
        for _ in range(CLAIM_ROUNDS):
            with self.db.transaction() as s:
                candidates = s.scalars(
                    select(TrainingJob.id)
                    .where(TrainingJob.state == JobState.QUEUED)
                    .order_by(TrainingJob.id)
                    .limit(CLAIM_CANDIDATES)
                ).all()
                if not candidates:
                    return None
                for pk in candidates:
                    won = apply(
                        s,
                        update(TrainingJob)
                        .where(TrainingJob.id == pk, TrainingJob.state == JobState.QUEUED)
                        .values(state=JobState.RUNNING, worker=worker, started_at=now, heartbeat_at=now),
                    )
                    if won == 1:
                        claimed = s.scalars(
                            select(TrainingJob)
                            .where(TrainingJob.id == pk)
                            .execution_options(populate_existing=True)
                        ).one()
                        audit.record(s, actor, "training.claim", subject(claimed.job_id), now, worker=worker)
                        break
            if claimed is not None:
                log.info(kv("training_job_claimed", job=claimed.job_id, worker=worker, by=actor))
                return claimed
        raise TrainingError(
            503, "claim_contention", "other trainers claimed every queued job first; retry the claim"
        )

    def progress(self, job_id: str, worker: str, report: JobProgress) -> TrainingJob:
        """Store ``report`` as the job's progress and refresh its heartbeat.

        Raises:
            TrainingError: 404 unknown job; 409 ``not_running`` or ``not_holder``.
        """
        now = self.clock()
        with self.db.transaction() as s:
            return held_update(s, job_id, worker, progress=report.model_dump(mode="json"), heartbeat_at=now)

    def finish(self, job_id: str, worker: str, report: JobFinish, actor: str) -> TrainingJob:
        """Mark the job succeeded once its bundle is in the registry with the reported digest.

        Raises:
            TrainingError: 404 unknown job; 409 ``not_running`` / ``not_holder``; 409
                ``result_mismatch`` (another name or version than the job's), 409
                ``model_not_registered`` or ``sha256_mismatch`` (the job stays running).
        """
        with self.db.session() as s:
            job = held(s, job_id, worker)
        name, version = job.model_name, job.model_version
        if (report.model_name, report.model_version) != (name, version):
            raise TrainingError(
                409,
                "result_mismatch",
                f"training job {job_id} produces {name} {version}, not "
                f"{report.model_name} {report.model_version}",
            )
        try:
            row = self.registry.get(name, version)
        except RegistryError as exc:
            raise TrainingError(
                409,
                "model_not_registered",
                f"model {name} {version} is not in the hub's registry; upload its bundle "
                "(POST /api/v1/models) before finishing the job",
            ) from exc
        if row.sha256 != report.sha256:
            raise TrainingError(
                409,
                "sha256_mismatch",
                f"model {name} {version} is registered with sha256 {row.sha256}, not {report.sha256}; "
                "the job's bundle is not the one the hub holds",
            )
        now = self.clock()
        with self.db.transaction() as s:
            job = held_update(
                s,
                job_id,
                worker,
                state=JobState.SUCCEEDED,
                result=report.model_dump(mode="json"),
                error=None,
                finished_at=now,
                heartbeat_at=now,
            )
            audit.record(
                s,
                actor,
                "training.succeeded",
                subject(job_id),
                now,
                model=f"{name} {version}",
                sha256=row.sha256,
            )
        log.info(kv("training_job_succeeded", job=job_id, worker=worker, model=f"{name} {version}"))
        return job

    def fail(self, job_id: str, worker: str, report: JobFailure, actor: str) -> TrainingJob:
        """End the job failed, or cancelled when ``report.cancelled``, with its error.

        Raises:
            TrainingError: 404 unknown job; 409 ``not_running`` or ``not_holder``.
        """
        state = JobState.CANCELLED if report.cancelled else JobState.FAILED
        now = self.clock()
        with self.db.transaction() as s:
            job = held_update(
                s, job_id, worker, state=state, error=report.error, finished_at=now, heartbeat_at=now
            )
            audit.record(s, actor, f"training.{state}", subject(job_id), now, error=report.error[:300])
        log.warning(kv(f"training_job_{state}", job=job_id, worker=worker, error=report.error[:300]))
        return job

    # --- the hub's own decisions ------------------------------------------------------------
    def expire_stale(self) -> int:
        """Fail running jobs whose trainer has been silent longer than the heartbeat timeout.

        Returns how many jobs ended. A job whose cancel was requested ends cancelled instead.
        """
        now = self.clock()
        limit = self.settings.heartbeat_timeout_s
        cutoff = now - timedelta(seconds=limit)
        with self.db.session() as s:
            stale = list(
                s.scalars(
                    select(TrainingJob).where(
                        TrainingJob.state == JobState.RUNNING, TrainingJob.heartbeat_at < cutoff
                    )
                )
            )
        if not stale:
            return 0
        ended = 0
        with self.db.transaction() as s:
            for job in stale:
                silent = int((now - (job.heartbeat_at or now)).total_seconds())
                error = (
                    f"no progress from trainer {job.worker} for {silent} s "
                    f"(training.heartbeat_timeout_s is {limit})"
                )
                if self._end(s, job, error, now, TrainingJob.heartbeat_at < cutoff):
                    ended += 1
        return ended

    def _release(self, worker: str, now: datetime) -> None:
        """End the running jobs ``worker`` still holds: it is claiming again, so it lost them."""
        error = f"trainer {worker} restarted while the job was running; nothing was published by this job"
        with self.db.transaction() as s:
            held = list(
                s.scalars(
                    select(TrainingJob).where(
                        TrainingJob.state == JobState.RUNNING, TrainingJob.worker == worker
                    )
                )
            )
            for job in held:
                self._end(s, job, error, now, TrainingJob.worker == worker)

    def _end(self, s: Session, job: TrainingJob, error: str, now: datetime, *conditions: Any) -> bool:
        """Fail (or cancel, when asked for) the running ``job`` if it still meets ``conditions``."""
        done = apply(
            s,
            update(TrainingJob)
            .where(TrainingJob.id == job.id, TrainingJob.state == JobState.RUNNING, *conditions)
            .values(
                # decided in the statement, so a cancel requested a moment ago still counts
                state=case(
                    (TrainingJob.cancel_requested.is_(True), JobState.CANCELLED),
                    else_=JobState.FAILED,
                ),
                error=error,
                finished_at=now,
            ),
        )
        if done != 1:
            return False
        state = s.scalar(select(TrainingJob.state).where(TrainingJob.id == job.id))
        audit.record(s, audit.ENGINE_ACTOR, f"training.{state}", subject(job.job_id), now, error=error)
        log.warning(kv(f"training_job_{state}", job=job.job_id, worker=job.worker, error=error))
        return True

    # --- helpers ----------------------------------------------------------------------------
    def _registered(self, name: str, version: str) -> bool:
        try:
            self.registry.get(name, version)
        except RegistryError:
            return False
        return True
