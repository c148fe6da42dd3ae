"""Training-job routes: queue and cancel (admin), list and show (trainer/admin), and what a
``leukonet trainer serve`` calls: claim, progress, finish, fail (trainer/admin).

Bodies are the models of :mod:`shared.training`. Those of progress, finish and fail carry no
worker name, so a trainer names itself with ``?worker=NAME`` (the name it claimed the job with);
only the worker holding a running job may report on it (409 otherwise).
"""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request
from pydantic import ValidationError

from hub.api.blueprint import bp
from hub.api.classifications import int_arg
from hub.api.rollouts import parse_body, validation_message
from hub.api.serialize import training_job_json
from hub.auth import require_roles
from hub.config import Role
from hub.errors import ApiError
from hub.extensions import hub_ext
from shared.training import JOB_STATES, ClaimRequest, JobFailure, JobFinish, JobProgress, TrainingJobSpec

MAX_LIST = 1000


def _worker() -> str:
    """The reporting trainer's name from ``?worker=``; 400 when missing or malformed."""
    raw = request.args.get("worker", "")
    try:
        return ClaimRequest(worker=raw).worker
    except ValidationError as exc:
        raise ApiError(
            400,
            "invalid_parameter",
            "send ?worker=NAME, the trainer name the job was claimed with "
            f"({validation_message(exc)}, got {raw!r})",
        ) from exc


@bp.post("/training-jobs")
@require_roles()
def queue_training_job() -> tuple[Response, int]:
    """Queue a job (body: TrainingJobSpec); 201 with the job, 409 when its model version is taken."""
    spec: TrainingJobSpec = parse_body(TrainingJobSpec)
    job = hub_ext.services.training.queue(spec, actor=g.principal.name)
    return jsonify(training_job_json(job)), 201


@bp.get("/training-jobs")
@require_roles(Role.TRAINER)
def list_training_jobs() -> dict[str, Any]:
    """Newest first; ``?state=`` filters, ``?limit=`` (1..1000, default 100)."""
    state = request.args.get("state")
    if state and state not in JOB_STATES:
        raise ApiError(400, "invalid_parameter", f"state must be one of {list(JOB_STATES)}, got {state!r}")
    limit = int_arg("limit", 100, 1, MAX_LIST)
    jobs = hub_ext.services.training.list_jobs(state, limit)
    return {"items": [training_job_json(j) for j in jobs]}


@bp.post("/training-jobs/claim")
@require_roles(Role.TRAINER)
def claim_training_job() -> Response | tuple[str, int]:
    """Body ClaimRequest: 200 with the oldest queued job, now running for the worker; 204 when none."""
    body: ClaimRequest = parse_body(ClaimRequest)
    job = hub_ext.services.training.claim(body.worker, actor=g.principal.name)
    if job is None:
        return "", 204
    return jsonify(training_job_json(job))


@bp.get("/training-jobs/<job_id>")
@require_roles(Role.TRAINER)
def show_training_job(job_id: str) -> dict[str, Any]:
    return training_job_json(hub_ext.services.training.get(job_id))


@bp.post("/training-jobs/<job_id>/progress")
@require_roles(Role.TRAINER)
def report_training_progress(job_id: str) -> dict[str, Any]:
    """Body JobProgress; answers ``{"cancel_requested": bool, "state": "running"}``."""
    worker = _worker()
    body: JobProgress = parse_body(JobProgress)
    job = hub_ext.services.training.progress(job_id, worker, body)
    return {"cancel_requested": job.cancel_requested, "state": job.state}


@bp.post("/training-jobs/<job_id>/finish")
@require_roles(Role.TRAINER)
def finish_training_job(job_id: str) -> dict[str, Any]:
    """Body JobFinish; 409 unless the registry holds that model version with that sha256."""
    worker = _worker()
    body: JobFinish = parse_body(JobFinish)
    job = hub_ext.services.training.finish(job_id, worker, body, actor=g.principal.name)
    return training_job_json(job)


@bp.post("/training-jobs/<job_id>/fail")
@require_roles(Role.TRAINER)
def fail_training_job(job_id: str) -> dict[str, Any]:
    """Body JobFailure: the job ends failed, or cancelled when ``cancelled`` is true."""
    worker = _worker()
    body: JobFailure = parse_body(JobFailure)
    job = hub_ext.services.training.fail(job_id, worker, body, actor=g.principal.name)
    return training_job_json(job)


@bp.post("/training-jobs/<job_id>/cancel")
@require_roles()
def cancel_training_job(job_id: str) -> dict[str, Any]:
    """Queued -> cancelled; running -> ``cancel_requested`` (the trainer stops); 409 once ended."""
    job = hub_ext.services.training.cancel(job_id, actor=g.principal.name)
    return training_job_json(job)
