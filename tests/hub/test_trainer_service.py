"""`leukonet trainer serve` against a live hub: claim, progress, publish + finish, failure, cancel, stop.

The trainer service is real (HTTP to a live hub app, a child process per job, signals); the child
is a small stand-in for `leukonet trainer run` that logs progress lines the way the trainer does
and prints a JSON summary naming a real signed bundle. Real training through the service runs in
tests/e2e (the demo queues its model as a job).
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from tests.conftest import wait_until
from tests.hub.conftest import TOKENS, BundleMaker, Keys, serve_app
from trainer.config import TrainerConfig
from trainer.service import TrainerService

FAKE_RUN = textwrap.dedent("""
    import hashlib, json, os, shutil, sys, time
    mode, args = sys.argv[1], sys.argv[3:]
    work = args[args.index("--work") + 1]
    with open(os.path.join(work, "child.json"), "w") as fh:
        json.dump({"args": sys.argv[2:], "pid": os.getpid(),
                   "env": sorted(k for k in os.environ if k.startswith("LEUKONET_"))}, fh)
    def progress(task, done, total, **kw):
        extra = " ".join(f"{k}={v}" for k, v in kw.items())
        print(f"2026-01-01 00:00:00,000 INFO trainer.train progress task={task} done={done} "
              f"total={total} pct=0 elapsed_s=0.1 eta_s=2.5 {extra}", file=sys.stderr, flush=True)
    progress("scan", 4, 4)
    for i in range(1, 4):
        progress("train", 10 * i, 30, loss="0.41")
        time.sleep(0.2)
    if mode == "fail":
        print("Error: data folder /x has 1 class folder(s) ['ALL']; it needs at least two", file=sys.stderr)
        sys.exit(1)
    while mode == "hang":
        progress("train", 10, 30)
        time.sleep(0.2)
    bundle = os.path.join(work, "bundle.zip")
    shutil.copyfile(os.environ["FAKE_BUNDLE"], bundle)
    sha = hashlib.sha256(open(bundle, "rb").read()).hexdigest()
    print(json.dumps({"bundle": bundle, "sha256": sha, "metrics": {"accuracy": 0.9},
                      "parity": {"max_abs_diff_fp32": 1e-6}}))
""")

JOBS = "/api/v1/training-jobs"


class Hub:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, role: str = "admin", **kw: Any) -> requests.Response:
        return requests.request(
            method, self.url + path, headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=10, **kw
        )

    def queue(self, dataset: str = "set", version: str = "1.1.0") -> str:
        r = self.call(
            "POST",
            JOBS,
            json={
                "name": "leuko",
                "version": version,
                "dataset": dataset,
                "steps": 30,
                "image_size": 96,
                "depth_multiplier": 0.35,
            },
        )
        assert r.status_code == 201, r.text
        job_id: str = r.json()["job_id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.call("GET", f"{JOBS}/{job_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def model(self, version: str) -> requests.Response:
        return self.call("GET", f"/api/v1/models/leuko/{version}")


@pytest.fixture
def hub(app: Flask) -> Iterator[Hub]:
    with serve_app(app) as url:
        yield Hub(url)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    data, work = tmp_path / "datasets", tmp_path / "jobs"
    (data / "set" / "ALL").mkdir(parents=True)
    (data / "set" / "normal").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (data / "escape").symlink_to(tmp_path / "elsewhere")
    return data, work


@pytest.fixture
def service(
    hub: Hub,
    keys: Keys,
    roots: tuple[Path, Path],
    tmp_path: Path,
    make_bundle: BundleMaker,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str], TrainerService]:
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    monkeypatch.setenv("FAKE_BUNDLE", str(make_bundle(version="1.1.0")))
    monkeypatch.setenv("LEUKONET_TRAINER_TOKEN", "must-not-reach-the-child")

    def make(mode: str) -> TrainerService:
        config = TrainerConfig.model_validate(
            {
                "hub_url": hub.url,
                "token": TOKENS["trainer"],
                "signing_key": keys.private,
                "data_root": roots[0],
                "work_root": roots[1],
                "worker": "box-1",
                "poll_interval_s": 0.1,
                "progress_interval_s": 0.2,
            }
        )
        return TrainerService(config, child_command=lambda args: [sys.executable, str(script), mode, *args])

    return make


def _child(roots: tuple[Path, Path], job_id: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((roots[1] / job_id / "child.json").read_text())
    return info


def test_a_queued_job_is_trained_published_and_finished(
    hub: Hub, service: Callable[[str], TrainerService], roots: tuple[Path, Path]
) -> None:
    job_id = hub.queue()
    assert service("ok").serve(max_jobs=1) == 1
    job = hub.job(job_id)
    assert job["state"] == "succeeded" and job["worker"] == "box-1" and job["error"] is None
    registered = hub.model("1.1.0")
    assert registered.status_code == 200
    assert job["result"]["sha256"] == registered.json()["sha256"]
    assert job["result"]["metrics"] == {"accuracy": 0.9}
    # Forwarded from the child's log lines; the last report was the publish phase.
    assert job["progress"] == {"phase": "publish", "done": 1, "total": 1, "eta_s": None, "detail": {}}
    child = _child(roots, job_id)
    args = dict(zip(child["args"][1::2], child["args"][2::2], strict=False))
    assert args["--data"] == str((roots[0] / "set").resolve()) and args["--steps"] == "30"
    assert args["--work"] == str(roots[1] / job_id)
    # The child gets the signing key's path, never a hub token (it does not publish).
    assert "LEUKONET_TRAINER_TOKEN" not in child["env"] and "LEUKONET_TRAINER_SIGNING_KEY" in child["env"]
    assert not any(TOKENS["trainer"] in a for a in child["args"])


def test_progress_reaches_the_hub_while_the_child_runs(
    hub: Hub, service: Callable[[str], TrainerService]
) -> None:
    job_id = hub.queue()
    svc = service("hang")
    thread = threading.Thread(target=svc.serve, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    try:
        seen = wait_until(lambda: (p := hub.job(job_id)["progress"]) and p["phase"] == "train" and p, 20)
        assert seen["total"] == 30 and seen["detail"].get("loss") in ("0.41", None) and seen["eta_s"] == 2.5
    finally:
        svc.stop("stopped by the test")
        thread.join(timeout=30)
    assert not thread.is_alive()
    job = hub.job(job_id)
    assert job["state"] == "failed" and "stopped by the test" in job["error"]
    assert hub.model("1.1.0").status_code == 404


def test_a_failing_run_marks_the_job_failed_with_its_error(
    hub: Hub, service: Callable[[str], TrainerService]
) -> None:
    job_id = hub.queue()
    service("fail").serve(max_jobs=1)
    job = hub.job(job_id)
    assert job["state"] == "failed"
    assert "training failed (exit 1): Error: data folder /x has 1 class folder(s)" in job["error"]
    assert hub.model("1.1.0").status_code == 404  # nothing half-published


def test_cancel_stops_the_child_and_publishes_nothing(
    hub: Hub, service: Callable[[str], TrainerService], roots: tuple[Path, Path]
) -> None:
    job_id = hub.queue()
    svc = service("hang")
    thread = threading.Thread(target=svc.serve, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    wait_until(lambda: hub.job(job_id)["progress"] is not None, 20)
    assert hub.call("POST", f"{JOBS}/{job_id}/cancel").status_code == 200
    thread.join(timeout=30)
    assert not thread.is_alive()
    job = hub.job(job_id)
    assert job["state"] == "cancelled" and "cancelled by the operator" in job["error"]
    assert hub.model("1.1.0").status_code == 404
    pid = _child(roots, job_id)["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_dataset_outside_the_data_root_is_refused(
    hub: Hub, service: Callable[[str], TrainerService], roots: tuple[Path, Path]
) -> None:
    escape, missing = hub.queue("escape", "1.1.0"), hub.queue("nope", "1.2.0")
    svc = service("ok")
    assert svc.serve(max_jobs=2) == 2
    assert "resolves outside the trainer's data_root" in hub.job(escape)["error"]
    assert "is not a folder under the trainer's data_root" in hub.job(missing)["error"]
    assert {hub.job(escape)["state"], hub.job(missing)["state"]} == {"failed"}
    assert not (roots[1] / escape / "child.json").exists()


def test_serve_waits_while_the_queue_is_empty(hub: Hub, service: Callable[[str], TrainerService]) -> None:
    svc = service("ok")
    thread = threading.Thread(target=svc.serve, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive() and svc.jobs_done == 0
    job_id = hub.queue()
    thread.join(timeout=30)
    assert not thread.is_alive() and hub.job(job_id)["state"] == "succeeded"


def test_serve_stops_with_a_clear_error_when_the_hub_refuses_its_token(
    hub: Hub, tmp_path: Path, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from trainer import cli as trainer_cli

    # CliRunner's streams close after the call: leave logging to pytest.
    monkeypatch.setattr(trainer_cli, "setup_logging", lambda level="INFO": None)
    result = CliRunner().invoke(
        trainer_cli.cli,
        ["serve", "--max-jobs", "1"],
        env={
            "LEUKONET_TRAINER_HUB_URL": hub.url,
            "LEUKONET_TRAINER_TOKEN": "not-a-token-of-this-hub",
            "LEUKONET_TRAINER_SIGNING_KEY": str(keys.private),
            "LEUKONET_TRAINER_WORK_ROOT": str(tmp_path / "w"),
        },
    )
    assert result.exit_code == 1
    assert "the hub refused the claim: HTTP 401" in result.output


def test_a_job_that_ends_elsewhere_stops_its_child(
    hub: Hub, service: Callable[[str], TrainerService], roots: tuple[Path, Path]
) -> None:
    job_id = hub.queue()
    svc = service("hang")
    thread = threading.Thread(target=svc.serve, kwargs={"max_jobs": 1}, daemon=True)
    thread.start()
    wait_until(lambda: hub.job(job_id)["progress"] is not None, 20)
    # The hub ends the job behind the service's back (as a heartbeat timeout would).
    r = hub.call(
        "POST",
        f"{JOBS}/{job_id}/fail",
        "trainer",
        params={"worker": "box-1"},
        json={"error": "ended by the hub"},
    )
    assert r.status_code == 200, r.text
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert hub.job(job_id)["error"] == "ended by the hub"  # not overwritten
    with pytest.raises(ProcessLookupError):
        os.kill(_child(roots, job_id)["pid"], 0)
    assert hub.model("1.1.0").status_code == 404
