"""Training-job rows: finding a job, and conditional updates that hold only while a job is still
what the caller believes (running, held by this worker) — the queue's concurrency guard."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.orm import Session

from hub.db.models import TrainingJob
from hub.errors import HubError
from shared.training import JobState


class TrainingError(HubError):
    """A job request or report the hub refuses; ``status``/``code`` map onto the API error."""


def find(s: Session, job_id: str) -> TrainingJob:
    """The job row (fresh from the database).

    Raises:
        TrainingError: 404 no such job.
    """
    job = s.scalars(
        select(TrainingJob).where(TrainingJob.job_id == job_id).execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise TrainingError(
            404,
            "job_not_found",
            f"training job {job_id!r} does not exist; list them with `leukonet training list`",
        )
    return job


def held(s: Session, job_id: str, worker: str) -> TrainingJob:
    """The job, if it is running and held by ``worker``; else the 404 / 409 that says why not."""
    job = find(s, job_id)
    if job.state != JobState.RUNNING:
        raise TrainingError(
            409,
            "not_running",
            f"training job {job_id} is {job.state}"
            + (f" ({job.error})" if job.error else "")
            + "; the hub accepts no more reports for it",
        )
    if job.worker != worker:
        raise TrainingError(
            409, "not_holder", f"training job {job_id} is held by trainer {job.worker}, not {worker}"
        )
    return job


def held_update(s: Session, job_id: str, worker: str, **values: Any) -> TrainingJob:
    """Apply ``values`` to the job if it is running and held by ``worker`` (atomically)."""
    done = apply(
        s,
        update(TrainingJob)
        .where(
            TrainingJob.job_id == job_id,
            TrainingJob.state == JobState.RUNNING,
            TrainingJob.worker == worker,
        )
        .values(**values),
    )
    if done != 1:
        held(s, job_id, worker)  # raises the reason
        raise TrainingError(409, "conflict", f"training job {job_id} changed meanwhile; retry")
    return find(s, job_id)


def apply(s: Session, stmt: Update) -> int:
    """Run a conditional UPDATE; returns how many rows it changed (0: the condition no longer held)."""
    result = s.execute(stmt, execution_options={"synchronize_session": False})
    return cast("CursorResult[Any]", result).rowcount
