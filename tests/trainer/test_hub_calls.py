"""The trainer's hub calls over ``shared.hubclient``: ``trainer serve``'s job client and ``publish``.

A scripted HTTP server answers each path as a test tells it to; the tests check which answers
are refusals (JobError, PublishError), which mean "try again later" (HubUnavailable), that a POST
is sent once, and the messages people read. The full loop against a live hub is
tests/hub/test_trainer_service.py.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from shared.hubclient import HubClient
from shared.training import JobFailure, JobFinish, JobProgress
from tests.conftest import serve_in_thread
from trainer.jobs_client import HubUnavailable, JobError, JobsClient
from trainer.publish import PublishError, publish

JOBS = "/api/v1/training-jobs"
FINISH = JobFinish(model_name="leuko", model_version="1.0.0", sha256="ab" * 32)


def envelope(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class _Scripted(BaseHTTPRequestHandler):
    """Answers a POST with ``answers[path]`` (status, body); records path, query and token."""

    answers: dict[str, tuple[int, bytes]]
    calls: list[dict[str, Any]]

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        path, _, query = self.path.partition("?")
        type(self).calls.append({"path": path, "query": query, "auth": self.headers.get("Authorization")})
        status, body = type(self).answers.get(path, (404, envelope("not_found", "no such route")))
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


@dataclass
class Hub:
    url: str
    handler: type[_Scripted]

    def answer(self, path: str, status: int, body: bytes = b"") -> None:
        self.handler.answers[path] = (status, body)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self.handler.calls


@pytest.fixture
def hub() -> Iterator[Hub]:
    handler = type("Handler", (_Scripted,), {"answers": {}, "calls": []})
    with serve_in_thread(HTTPServer(("127.0.0.1", 0), handler)) as url:
        yield Hub(url, handler)


@pytest.fixture
def jobs(hub: Hub) -> JobsClient:
    return JobsClient(HubClient(hub.url, "tok", timeout_s=5), "box-1")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_claim_answers_a_job_nothing_a_refusal_or_try_later(hub: Hub, jobs: JobsClient) -> None:
    hub.answer(f"{JOBS}/claim", 204)
    assert jobs.claim() is None
    assert hub.calls[0] == {"path": f"{JOBS}/claim", "query": "worker=box-1", "auth": "Bearer tok"}
    hub.answer(f"{JOBS}/claim", 200, json.dumps({"job_id": "j1", "spec": {}}).encode())
    assert jobs.claim() == {"job_id": "j1", "spec": {}}
    hub.answer(f"{JOBS}/claim", 401, envelope("unauthorized", "unknown token"))
    with pytest.raises(JobError, match="^the hub refused the claim: HTTP 401 unauthorized: unknown token$"):
        jobs.claim()
    hub.calls.clear()
    hub.answer(f"{JOBS}/claim", 503, b"<html>busy</html>")
    with pytest.raises(HubUnavailable, match="^hub answered HTTP 503 to POST /claim$"):
        jobs.claim()
    assert len(hub.calls) == 1  # a POST is never retried: a claim must not happen twice


def test_progress_finish_and_fail_answers(
    hub: Hub, jobs: JobsClient, caplog: pytest.LogCaptureFixture
) -> None:
    progress = JobProgress(phase="train", done=1, total=3)
    hub.answer(f"{JOBS}/j1/progress", 200, b'{"cancel_requested": true}')
    assert jobs.progress("j1", progress) is True
    hub.answer(f"{JOBS}/j1/progress", 200, b'{"cancel_requested": false}')
    assert jobs.progress("j1", progress) is False
    hub.answer(f"{JOBS}/j1/progress", 409, envelope("conflict", "job j1 is not running on box-1"))
    with pytest.raises(JobError, match="^the hub refused a progress report: HTTP 409 conflict: job j1"):
        jobs.progress("j1", progress)
    hub.answer(f"{JOBS}/j1/finish", 200, b"{}")
    jobs.finish("j1", FINISH)
    hub.answer(f"{JOBS}/j1/finish", 409, envelope("conflict", "leuko 1.0.0 is not in the registry"))
    with pytest.raises(JobError, match="^the hub did not accept the result: HTTP 409 conflict: leuko"):
        jobs.finish("j1", FINISH)
    # A refused failure report is logged, not raised: the job is over either way.
    hub.answer(f"{JOBS}/j1/fail", 409, envelope("conflict", "job j1 already ended"))
    with caplog.at_level(logging.ERROR, logger="trainer.jobs_client"):
        jobs.fail("j1", JobFailure(error="boom"))
    assert "fail_not_recorded" in caplog.text and "job j1 already ended" in caplog.text
    hub.answer(f"{JOBS}/j1/fail", 500, envelope("internal", "database is down"))
    with pytest.raises(HubUnavailable, match="HTTP 500 to POST /j1/fail"):
        jobs.fail("j1", JobFailure(error="boom"))


def test_an_unreachable_hub_is_try_later_for_jobs_and_an_error_for_publish(
    closed_port: int, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(HubUnavailable, match=f"^cannot reach the hub at {url}: "):
        JobsClient(HubClient(url, "tok", timeout_s=5), "box-1").claim()
    bundle = tmp_path / "m.zip"
    bundle.write_bytes(b"PK")
    with pytest.raises(PublishError, match=f"^cannot reach the hub at {url}: "):
        publish(bundle, url, "tok", timeout=5)


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [
        (401, "unauthorized", "(check the token)"),
        (403, "forbidden", "(the token needs the trainer or admin role)"),
        (409, "conflict", "(this name + version is already published: bump --version)"),
        (413, "too_large", "(bundle too large for the hub's upload limit)"),
        (500, "internal", ""),
    ],
)
def test_publish_refusals_name_the_file_the_hub_reason_and_a_hint(
    hub: Hub, tmp_path: Path, status: int, code: str, hint: str
) -> None:
    bundle = tmp_path / "leuko-1.0.0.zip"
    bundle.write_bytes(b"PK")
    hub.answer("/api/v1/models", status, envelope(code, "the hub's reason"))
    with pytest.raises(PublishError) as refused:
        publish(bundle, hub.url, "tok")
    assert (
        str(refused.value)
        == f"hub refused leuko-1.0.0.zip: HTTP {status} {code}: the hub's reason {hint}".strip()
    )
    assert len(hub.calls) == 1 and hub.calls[0]["auth"] == "Bearer tok"


def test_publish_needs_a_bundle_a_token_and_a_json_answer(hub: Hub, tmp_path: Path) -> None:
    bundle = tmp_path / "m.zip"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        publish(bundle, hub.url, "tok")
    bundle.write_bytes(b"PK")
    with pytest.raises(PublishError, match="^no hub token: pass --token"):
        publish(bundle, hub.url, "")
    hub.answer("/api/v1/models", 201, b"<html>not the hub</html>")
    with pytest.raises(PublishError, match="^hub answered HTTP 201 without JSON from .*/api/v1/models$"):
        publish(bundle, hub.url, "tok")
    assert len(hub.calls) == 1
