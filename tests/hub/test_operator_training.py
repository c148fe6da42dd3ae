"""``leukonet training ...`` against a live in-process hub: queue, list, show, cancel, and watch
with its exit codes (0 succeeded, 1 failed / cancelled / refused, 2 usage, 4 timeout)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result

from hub.operator.training import training as training_cli
from tests.hub.conftest import TOKENS, auth, serve_app, upload_bundle
from tests.hub.test_training_jobs import claim, report

Cli = Callable[..., Result]


@pytest.fixture
def cli(app) -> Iterator[Cli]:
    runner = CliRunner()
    with serve_app(app) as url:

        def invoke(*args: str) -> Result:
            return runner.invoke(training_cli, [*args, "--hub", url, "--token", TOKENS["admin"]])

        yield invoke


def queue(cli: Cli, version: str = "1.1.0", *extra: str) -> str:
    r = cli(
        "queue", "--name", "leuko", "--version", version, "--dataset", "all-idb2-import", *extra, "--json"
    )
    assert r.exit_code == 0, r.output
    job_id: str = json.loads(r.output)["job_id"]
    return job_id


def test_queue_list_show_cancel(cli, client):
    r = cli("queue", "--version", "1.1.0", "--dataset", "d")
    assert r.exit_code == 2 and "--name" in r.output
    r = cli("queue", "--name", "leuko", "--version", "1.1.0", "--dataset", "/srv/data")
    assert r.exit_code == 1 and "dataset" in r.output and "invalid_body" in r.output
    r = cli("queue", "--name", "leuko", "--version", "1.1.0", "--dataset", "d", "--mode", "finetune")
    assert r.exit_code == 1 and "needs a checkpoint" in r.output

    r = cli(
        "queue",
        "--name",
        "leuko",
        "--version",
        "1.1.0",
        "--dataset",
        "all-idb2-import",
        "--mode",
        "finetune",
        "--checkpoint",
        "inception_v3.ckpt",
        "--steps",
        "300",
        "--batch-size",
        "8",
        "--learning-rate",
        "0.005",
        "--image-size",
        "149",
        "--depth-multiplier",
        "0.5",
        "--seed",
        "7",
        "--trainable-scope",
        "Mixed_7c",
        "--int8",
    )
    assert r.exit_code == 0, r.output
    assert r.output.startswith("queued training job ") and "leuko 1.1.0 from all-idb2-import" in r.output
    job_id = r.output.split()[3].rstrip(":")
    spec = client.get(f"/api/v1/training-jobs/{job_id}", headers=auth("admin")).json["spec"]
    assert (spec["mode"], spec["steps"], spec["batch_size"], spec["learning_rate"], spec["image_size"]) == (
        "finetune",
        300,
        8,
        0.005,
        149,
    )
    assert (spec["depth_multiplier"], spec["seed"], spec["trainable_scopes"]) == (0.5, 7, ["Mixed_7c"])
    assert spec["int8"] is True
    r = cli("queue", "--name", "leuko", "--version", "1.1.0", "--dataset", "other")
    assert r.exit_code == 1 and "job_exists" in r.output

    r = cli("list")
    assert r.exit_code == 0 and job_id in r.output and "queued" in r.output and "finetune" in r.output
    assert (
        cli("list", "--state", "running").output.strip()
        == "JOB  STATE  MODEL  MODE  DATASET  PROGRESS  WORKER  CREATED"
    )
    assert cli("list", "--state", "done").exit_code == 2
    r = cli("list", "--json", "--limit", "1")
    assert r.exit_code == 0 and [j["job_id"] for j in json.loads(r.output)["items"]] == [job_id]

    r = cli("show", job_id)
    assert r.exit_code == 0 and "finetune from inception_v3.ckpt" in r.output and "t-admin" in r.output
    assert cli("show", "nope").exit_code == 1

    r = cli("cancel", job_id)
    assert r.exit_code == 0 and f"training job {job_id}: cancelled" in r.output
    r = cli("cancel", job_id)
    assert r.exit_code == 1 and "invalid_state" in r.output


def test_watch_exit_codes(cli, client, make_bundle):
    queued = queue(cli, "1.1.0")
    r = cli("watch", queued, "--interval", "0.1", "--timeout", "0.3")
    assert r.exit_code == 4 and "stopped watching" in r.output and "queued" in r.output

    assert claim(client, "t1").json["job_id"] == queued
    sha = upload_bundle(client, make_bundle(version="1.1.0")).json["sha256"]

    def trainer() -> None:  # the job moves on while `watch` polls
        time.sleep(0.4)
        report(client, queued, "progress", phase="train", done=150, total=300, eta_s=240)
        time.sleep(0.6)
        body: dict[str, Any] = {
            "model_name": "leuko",
            "model_version": "1.1.0",
            "sha256": sha,
            "metrics": {"accuracy": 0.91},
        }
        report(client, queued, "finish", **body)

    thread = threading.Thread(target=trainer)
    thread.start()
    r = cli("watch", queued, "--interval", "0.1", "--timeout", "20")
    thread.join(10)
    assert r.exit_code == 0, r.output
    assert "running   leuko 1.1.0  train 50% (150/300) · ETA 4 min  on t1" in r.output
    assert "succeeded" in r.output and sha in r.output and '"accuracy": 0.91' in r.output

    failed = queue(cli, "1.2.0")
    claim(client, "t1")
    report(client, failed, "fail", error="out of memory at step 12")
    r = cli("watch", failed, "--interval", "0.1")
    assert r.exit_code == 1 and "out of memory at step 12" in r.output
    cancelled = queue(cli, "1.3.0")
    assert cli("cancel", cancelled).exit_code == 0
    r = cli("watch", cancelled, "--json")
    assert r.exit_code == 1 and json.loads(r.output)["state"] == "cancelled"
    assert cli("watch", "nope").exit_code == 1
