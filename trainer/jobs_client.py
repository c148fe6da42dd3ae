"""The trainer's side of the hub's training-job API (``/api/v1/training-jobs``).

A thin layer over :class:`shared.hubclient.HubClient` (bearer token, error envelope) that turns
the hub's answers into the two outcomes :class:`trainer.service.TrainerService` acts on:
:class:`HubUnavailable` (network error or 5xx: try again later) and :class:`JobError` (the hub
refused: wrong token or role, or the job is no longer this trainer's). Every call is a POST, which
``HubClient`` never retries, so a claim or a finish cannot happen twice; the service decides
when to ask again.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

import requests

from shared.hubclient import HubClient, HubError
from shared.logs import kv
from shared.training import JobFailure, JobFinish, JobProgress

log = logging.getLogger(__name__)

JOBS_PATH = "/training-jobs"


class JobError(Exception):
    """A job that cannot run or did not finish; the message is what the hub records."""


class HubUnavailable(Exception):
    """The hub could not be reached or answered 5xx; the service retries later."""


class JobsClient:
    """Claim, progress, finish and fail calls of one worker, through ``hub``.

    Args:
        hub: the hub's REST client, holding the trainer's token.
        worker: this trainer's name on the hub (sent with every call).
    """

    def __init__(self, hub: HubClient, worker: str) -> None:
        self.hub = hub
        self.worker = worker

    def _post(
        self, path: str, body: dict[str, Any], refused: str, accept: Collection[int] = (200,)
    ) -> requests.Response:
        """POST ``body`` to ``/training-jobs{path}``: the response, when its status is in ``accept``.

        Raises:
            HubUnavailable: the hub is unreachable or answered 5xx.
            JobError: any other answer; the message is ``refused`` and the hub's status, code
                and message.
        """
        try:
            response = self.hub.request(
                "POST", f"{JOBS_PATH}{path}", json=body, params={"worker": self.worker}
            )
        except HubError as exc:
            if exc.status == 0:
                raise HubUnavailable(exc.message) from exc
            if exc.unreachable:
                raise HubUnavailable(f"hub answered HTTP {exc.status} to POST {path}") from exc
            raise JobError(f"{refused}: {exc.detail}") from exc
        if response.status_code not in accept:
            unexpected = HubError.from_response(response, f"POST {path}")
            raise JobError(f"{refused}: {unexpected.detail}")
        return response

    def claim(self) -> dict[str, Any] | None:
        """The claimed job's JSON, or ``None`` when nothing is queued (204).

        Raises:
            HubUnavailable: the hub is down (retry later).
            JobError: the hub refused (401/403: wrong token or role).
        """
        response = self._post("/claim", {"worker": self.worker}, "the hub refused the claim", (200, 204))
        if response.status_code == 204:
            return None
        job: dict[str, Any] = response.json()
        return job

    def progress(self, job_id: str, progress: JobProgress) -> bool:
        """Report ``progress``; True when the operator asked to cancel the job.

        Raises:
            HubUnavailable: the hub is down (the report is lost; the next one may get through).
            JobError: the hub refused the report, e.g. 409 when the job is no longer running here
                (it timed out or another claim ended it): the job must stop.
        """
        response = self._post(
            f"/{job_id}/progress", progress.model_dump(mode="json"), "the hub refused a progress report"
        )
        return bool(response.json().get("cancel_requested"))

    def finish(self, job_id: str, finish: JobFinish) -> None:
        """Report the job succeeded with ``finish`` (the hub checks the bundle is in its registry).

        Raises:
            HubUnavailable: the hub is down.
            JobError: the hub did not accept the result.
        """
        self._post(f"/{job_id}/finish", finish.model_dump(mode="json"), "the hub did not accept the result")

    def fail(self, job_id: str, failure: JobFailure) -> None:
        """Report the job failed or was cancelled; a refusal is logged (``fail_not_recorded``), not raised.

        Raises:
            HubUnavailable: the hub is down (the caller retries).
        """
        try:
            self._post(
                f"/{job_id}/fail", failure.model_dump(mode="json"), "the hub refused the failure report"
            )
        except JobError as exc:
            log.error(kv("fail_not_recorded", job=job_id, detail=exc))
