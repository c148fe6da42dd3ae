"""Training-job routes: queue and cancel (admin), list and show (trainer/admin), and what a
``leukonet trainer serve`` calls: claim, progress, finish, fail (trainer/admin).

Bodies are the models of :mod:`shared.training`. Those of progress, finish and fail carry no
worker name, so a trainer names itself with ``?worker=NAME`` (the name it claimed the job with);
only the worker holding a running job may report on it (409 otherwise).
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify
from pydantic import ConfigDict, Field

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_body, parse_query
from hub.api.schemas import ProgressAck, TrainingJobList, TrainingJobOut
from hub.api.serialize import training_job_json
from hub.extensions import hub_ext
from hub.roles import OPERATORS, READERS, Role
from shared.training import ClaimRequest, JobFailure, JobFinish, JobProgress, JobState, TrainingJobSpec

MAX_LIST = 1000
WORKER_HINT = "send ?worker=NAME, the trainer name the job was claimed with"


class JobsQuery(QueryModel):
    state: JobState | None = Field(None, title="only jobs in this state")
    limit: int = Field(100, ge=1, le=MAX_LIST, title="most jobs to return")


class WorkerQuery(ClaimRequest):
    """``?worker=NAME`` on progress, finish and fail: the trainer holding the job."""

    model_config = ConfigDict(extra="ignore", frozen=True)


def _worker() -> str:
    """The reporting trainer's name from ``?worker=``; 400 when missing or malformed."""
    return parse_query(WorkerQuery, hint=WORKER_HINT).worker


@bp.post("/training-jobs")
@documented(*OPERATORS, body=TrainingJobSpec, responses={201: TrainingJobOut}, errors=(409, 422))
def queue_training_job() -> tuple[Response, int]:
    """Queue a job (body: TrainingJobSpec); 201 with the job, 409 when its model version is taken."""
    spec = parse_body(TrainingJobSpec)
    job = hub_ext.services.training.queue(spec, actor=g.principal.name)
    return jsonify(training_job_json(job)), 201


@bp.get("/training-jobs")
@documented(*READERS, query=JobsQuery, responses={200: TrainingJobList})
def list_training_jobs() -> dict[str, Any]:
    """Training jobs newest first; ``?state=`` filters, ``?limit=`` (1..1000, default 100)."""
    q = parse_query(JobsQuery)
    jobs = hub_ext.services.training.list_jobs(q.state, q.limit)
    return {"items": [training_job_json(j) for j in jobs]}


@bp.post("/training-jobs/claim")
@documented(Role.TRAINER, body=ClaimRequest, responses={200: TrainingJobOut, 204: None}, errors=(422, 503))
def claim_training_job() -> Response | tuple[str, int]:
    """Body ClaimRequest: 200 with the oldest queued job, now running for the worker; 204 when none."""
    body = parse_body(ClaimRequest)
    job = hub_ext.services.training.claim(body.worker, actor=g.principal.name)
    if job is None:
        return "", 204
    return jsonify(training_job_json(job))


@bp.get("/training-jobs/<job_id>")
@documented(*READERS, responses={200: TrainingJobOut}, errors=(404,))
def show_training_job(job_id: str) -> dict[str, Any]:
    """One training job."""
    return training_job_json(hub_ext.services.training.get(job_id))


@bp.post("/training-jobs/<job_id>/progress")
@documented(
    Role.TRAINER, query=WorkerQuery, body=JobProgress, responses={200: ProgressAck}, errors=(404, 409, 422)
)
def report_training_progress(job_id: str) -> dict[str, Any]:
    """Body JobProgress; answers ``{"cancel_requested": bool, "state": "running"}``."""
    worker = _worker()
    body = parse_body(JobProgress)
    job = hub_ext.services.training.progress(job_id, worker, body)
    return {"cancel_requested": job.cancel_requested, "state": job.state}


@bp.post("/training-jobs/<job_id>/finish")
@documented(
    Role.TRAINER, query=WorkerQuery, body=JobFinish, responses={200: TrainingJobOut}, errors=(404, 409, 422)
)
def finish_training_job(job_id: str) -> dict[str, Any]:
    """Body JobFinish; 409 unless the registry holds that model version with that sha256."""
    worker = _worker()
    body = parse_body(JobFinish)
    job = hub_ext.services.training.finish(job_id, worker, body, actor=g.principal.name)
    return training_job_json(job)


@bp.post("/training-jobs/<job_id>/fail")
@documented(
    Role.TRAINER, query=WorkerQuery, body=JobFailure, responses={200: TrainingJobOut}, errors=(404, 409, 422)
)
def fail_training_job(job_id: str) -> dict[str, Any]:
    """Body JobFailure: the job ends failed, or cancelled when ``cancelled`` is true."""
    worker = _worker()
    body = parse_body(JobFailure)
    job = hub_ext.services.training.fail(job_id, worker, body, actor=g.principal.name)
    return training_job_json(job)


@bp.post("/training-jobs/<job_id>/cancel")
@documented(*OPERATORS, responses={200: TrainingJobOut}, errors=(404, 409))
def cancel_training_job(job_id: str) -> dict[str, Any]:
    """Queued -> cancelled; running -> ``cancel_requested`` (the trainer stops); 409 once ended."""
    job = hub_ext.services.training.cancel(job_id, actor=g.principal.name)
    return training_job_json(job)
