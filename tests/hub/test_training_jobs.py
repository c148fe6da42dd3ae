"""Training-job queue API on SQLite: auth, validation, queue -> claim -> progress -> finish with a
real signed bundle in the registry, failures, cancel, worker restart, heartbeat timeout, holder
rule. Time is a fake clock on the service (``clock`` fixture)."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest
from flask import Flask

from hub.app import close_app
from hub.extensions import hub_ext
from tests.hub.conftest import FakeClock, auth, hub_config, migrated_app, upload_bundle

API = "/api/v1/training-jobs"
SPEC: dict[str, Any] = {"name": "leuko", "version": "1.1.0", "dataset": "all-idb2-import", "steps": 50}


@pytest.fixture
def clock(app) -> FakeClock:
    c = FakeClock()
    hub_ext.for_app(app).training.clock = c
    return c


def queue(client, **fields: Any) -> dict[str, Any]:
    r = client.post(API, json={**SPEC, **fields}, headers=auth("admin"))
    assert r.status_code == 201, r.json
    return r.json


def claim(client, worker: str = "t1"):
    return client.post(f"{API}/claim", json={"worker": worker}, headers=auth("trainer"))


def report(client, job_id: str, action: str, worker: str = "t1", **body: Any):
    return client.post(f"{API}/{job_id}/{action}?worker={worker}", json=body, headers=auth("trainer"))


def show(client, job_id: str) -> dict[str, Any]:
    r = client.get(f"{API}/{job_id}", headers=auth("trainer"))
    assert r.status_code == 200, r.json
    return r.json


def audit_actions(client) -> list[tuple[str, str]]:
    items = client.get("/api/v1/audit?subject=training-job/", headers=auth("admin")).json["items"]
    return [(a["actor"], a["action"]) for a in items]


def test_auth_401_without_token_403_for_agents_and_trainer_writes(client):
    job_id = queue(client)["job_id"]
    routes = [
        ("post", API, SPEC),
        ("get", API, None),
        ("get", f"{API}/{job_id}", None),
        ("post", f"{API}/claim", {"worker": "t1"}),
        ("post", f"{API}/{job_id}/progress?worker=t1", {"phase": "train", "done": 1, "total": 2}),
        ("post", f"{API}/{job_id}/fail?worker=t1", {"error": "x"}),
        ("post", f"{API}/{job_id}/cancel", None),
    ]
    for method, url, body in routes:
        r = getattr(client, method)(url, json=body)
        assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized", url
        r = getattr(client, method)(url, json=body, headers=auth("agent"))
        assert r.status_code == 403 and "role agent" in r.json["error"]["message"], url
    # queueing and cancelling are the operator's: a trainer token may not
    assert client.post(API, json=SPEC, headers=auth("trainer")).status_code == 403
    assert client.post(f"{API}/{job_id}/cancel", headers=auth("trainer")).status_code == 403
    assert show(client, job_id)["state"] == "queued"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"dataset": "/data/all-idb2"}, "dataset"),
        ({"dataset": "../outside"}, "dataset"),
        ({"mode": "scratch", "checkpoint": "inception_v3.ckpt"}, "checkpoint"),
        ({"mode": "finetune"}, "checkpoint"),
        ({"version": "1.0"}, "version"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"epochs": 3}, "epochs"),
    ],
)
def test_queue_validation_names_the_field(client, fields, named):
    r = client.post(API, json={**SPEC, **fields}, headers=auth("admin"))
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "invalid_body" and named in r.json["error"]["message"]
    assert client.get(API, headers=auth("admin")).json["items"] == []


def test_bad_requests_are_4xx_json(client):
    r = client.post(API, data="name=leuko", headers=auth("admin"))
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_body"
    r = client.get(f"{API}?state=done", headers=auth("admin"))
    assert r.status_code == 400 and "state must be one of" in r.json["error"]["message"]
    r = client.get(f"{API}?limit=0", headers=auth("admin"))
    assert r.status_code == 400 and "limit" in r.json["error"]["message"]
    r = client.post(f"{API}/claim", json={"worker": "bad name!"}, headers=auth("trainer"))
    assert r.status_code == 422 and "worker" in r.json["error"]["message"]
    job_id = queue(client)["job_id"]
    assert claim(client).status_code == 200
    r = client.post(
        f"{API}/{job_id}/progress", json={"phase": "t", "done": 0, "total": 1}, headers=auth("trainer")
    )
    assert r.status_code == 400 and "?worker=NAME" in r.json["error"]["message"]
    r = report(client, job_id, "progress", phase="train", done=-1, total=10)
    assert r.status_code == 422 and "done" in r.json["error"]["message"]
    r = client.get(f"{API}/no-such-job", headers=auth("admin"))
    assert r.status_code == 404 and r.json["error"]["code"] == "job_not_found"


def test_queue_claim_progress_finish_with_a_published_bundle(client, clock, make_bundle):
    job = queue(client, mode="bottleneck", checkpoint="inception_v3.ckpt", learning_rate=0.01)
    assert (job["state"], job["worker"], job["progress"], job["created_by"]) == (
        "queued",
        None,
        None,
        "t-admin",
    )
    assert job["spec"]["learning_rate"] == 0.01 and job["spec"]["batch_size"] == 16  # defaults filled in
    assert job["created_at"] == clock.now.isoformat() and job["started_at"] is None
    assert len(job["job_id"]) == 36

    clock.advance(5)
    r = claim(client, "gpu-box:1")
    assert r.status_code == 200, r.json
    running = r.json
    assert (running["job_id"], running["state"], running["worker"]) == (job["job_id"], "running", "gpu-box:1")
    assert running["started_at"] == running["heartbeat_at"] == clock.now.isoformat()
    assert claim(client, "t2").status_code == 204  # nothing else queued

    clock.advance(60)
    r = report(
        client,
        job["job_id"],
        "progress",
        "gpu-box:1",
        phase="train",
        done=20,
        total=50,
        eta_s=90,
        detail={"loss": "0.41"},
    )
    assert r.status_code == 200 and r.json == {"cancel_requested": False, "state": "running"}
    shown = show(client, job["job_id"])
    assert shown["progress"] == {
        "phase": "train",
        "done": 20,
        "total": 50,
        "eta_s": 90.0,
        "detail": {"loss": "0.41"},
    }
    assert shown["heartbeat_at"] == clock.now.isoformat()

    finish = {
        "model_name": "leuko",
        "model_version": "1.1.0",
        "sha256": "0" * 64,
        "metrics": {"accuracy": 0.93},
        "parity": {"fp32_max_abs": 2e-6},
        "elapsed_s": 812.5,
    }
    # not uploaded yet: refused, and the job stays running (the trainer then reports a failure)
    r = report(client, job["job_id"], "finish", "gpu-box:1", **finish)
    assert r.status_code == 409 and r.json["error"]["code"] == "model_not_registered"
    assert show(client, job["job_id"])["state"] == "running"

    uploaded = upload_bundle(client, make_bundle(version="1.1.0"))
    assert uploaded.status_code == 201, uploaded.json
    sha = uploaded.json["sha256"]
    r = report(client, job["job_id"], "finish", "gpu-box:1", **finish)  # wrong digest
    assert (
        r.status_code == 409
        and r.json["error"]["code"] == "sha256_mismatch"
        and sha in r.json["error"]["message"]
    )
    r = report(
        client, job["job_id"], "finish", "gpu-box:1", **{**finish, "model_version": "1.2.0", "sha256": sha}
    )
    assert r.status_code == 409 and r.json["error"]["code"] == "result_mismatch"
    assert show(client, job["job_id"])["state"] == "running"

    clock.advance(1)
    r = report(client, job["job_id"], "finish", "gpu-box:1", **{**finish, "sha256": sha})
    assert r.status_code == 200, r.json
    done = r.json
    assert (done["state"], done["error"], done["finished_at"]) == ("succeeded", None, clock.now.isoformat())
    assert done["result"] == {**finish, "sha256": sha}

    # a finished job takes no more reports, and its version can't be queued again
    r = report(client, job["job_id"], "progress", "gpu-box:1", phase="x", done=0, total=0)
    assert r.status_code == 409 and r.json["error"]["code"] == "not_running"
    r = client.post(API, json=SPEC, headers=auth("admin"))
    assert r.status_code == 409 and r.json["error"]["code"] == "model_exists"
    assert audit_actions(client) == [
        ("t-trainer", "training.succeeded"),
        ("t-trainer", "training.claim"),
        ("t-admin", "training.queue"),
    ]


def test_one_active_job_per_model_version(client):
    first = queue(client)
    r = client.post(API, json=SPEC, headers=auth("admin"))
    assert r.status_code == 409 and r.json["error"]["code"] == "job_exists"
    assert first["job_id"] in r.json["error"]["message"]
    queue(client, version="1.1.1")  # another version is fine
    assert client.post(f"{API}/{first['job_id']}/cancel", headers=auth("admin")).status_code == 200
    queue(client)  # the cancelled job no longer holds 1.1.0


def test_fail_stores_the_error(client, clock):
    job_id = queue(client)["job_id"]
    claim(client)
    clock.advance(30)
    r = report(client, job_id, "fail", error="data set all-idb2-import has 1 class; need 2")
    assert r.status_code == 200, r.json
    assert (r.json["state"], r.json["error"], r.json["finished_at"]) == (
        "failed",
        "data set all-idb2-import has 1 class; need 2",
        clock.now.isoformat(),
    )
    r = report(client, job_id, "fail", error="again")
    assert r.status_code == 409 and "is failed (data set" in r.json["error"]["message"]
    assert ("t-trainer", "training.failed") in audit_actions(client)


def test_cancel_queued_at_once_and_running_through_the_trainer(client):
    a = queue(client)["job_id"]
    b = queue(client, version="1.1.1")["job_id"]
    r = client.post(f"{API}/{a}/cancel", headers=auth("admin"))
    assert r.status_code == 200
    assert (r.json["state"], r.json["error"]) == (
        "cancelled",
        "cancelled by t-admin before a trainer claimed it",
    )
    assert r.json["finished_at"] is not None

    assert claim(client).json["job_id"] == b  # the cancelled job is skipped
    r = report(client, b, "progress", phase="train", done=1, total=10)
    assert r.json == {"cancel_requested": False, "state": "running"}
    r = client.post(f"{API}/{b}/cancel", headers=auth("admin"))
    assert r.status_code == 200 and (r.json["state"], r.json["cancel_requested"]) == ("running", True)
    assert client.post(f"{API}/{b}/cancel", headers=auth("admin")).status_code == 200  # asking twice is fine
    r = report(client, b, "progress", phase="train", done=2, total=10)
    assert r.status_code == 200 and r.json == {"cancel_requested": True, "state": "running"}
    r = report(client, b, "fail", error="stopped at step 2 as the operator asked", cancelled=True)
    assert r.status_code == 200 and r.json["state"] == "cancelled"

    for job_id in (a, b):
        r = client.post(f"{API}/{job_id}/cancel", headers=auth("admin"))
        assert r.status_code == 409 and r.json["error"]["code"] == "invalid_state"
    assert client.post(f"{API}/nope/cancel", headers=auth("admin")).status_code == 404
    assert audit_actions(client).count(("t-admin", "training.cancel")) == 3


def test_a_restarted_worker_fails_its_old_job_first(client):
    a = queue(client)["job_id"]
    b = queue(client, version="1.1.1")["job_id"]
    c = queue(client, version="1.1.2")["job_id"]
    assert claim(client, "t1").json["job_id"] == a
    assert claim(client, "t2").json["job_id"] == b
    client.post(f"{API}/{b}/cancel", headers=auth("admin"))  # t2's job: cancel requested
    assert claim(client, "t1").json["job_id"] == c  # t1 came back: a is dead
    old = show(client, a)
    assert old["state"] == "failed" and old["finished_at"]
    assert old["error"] == "trainer t1 restarted while the job was running; nothing was published by this job"
    assert show(client, b)["state"] == "running"  # another worker's job is untouched
    assert claim(client, "t2").status_code == 204  # t2 restarted too: its cancelled job ends cancelled
    assert show(client, b)["state"] == "cancelled" and "trainer t2 restarted" in show(client, b)["error"]
    r = report(client, a, "progress", "t1", phase="train", done=1, total=2)
    assert r.status_code == 409 and "restarted" in r.json["error"]["message"]
    assert ("engine", "training.failed") in audit_actions(client)


def test_stale_heartbeat_fails_the_job_lazily(client, clock):
    job_id = queue(client)["job_id"]
    claim(client)
    clock.advance(1700)
    assert report(client, job_id, "progress", phase="train", done=1, total=9).status_code == 200
    clock.advance(1799)  # 1799 s after the last report: within the 1800 s default
    assert show(client, job_id)["state"] == "running"
    clock.advance(2)
    job = show(client, job_id)
    assert job["state"] == "failed" and job["finished_at"] == clock.now.isoformat()
    assert job["error"] == "no progress from trainer t1 for 1801 s (training.heartbeat_timeout_s is 1800)"
    r = report(client, job_id, "progress", phase="train", done=2, total=9)
    assert r.status_code == 409 and "no progress from trainer t1" in r.json["error"]["message"]


def test_heartbeat_timeout_comes_from_the_config(tmp_path, keys):
    config = hub_config(tmp_path, keys, training={"heartbeat_timeout_s": 60})
    app = migrated_app(config)
    try:
        service = hub_ext.for_app(app).training
        service.clock = clock = FakeClock()
        client = app.test_client()
        job_id = queue(client)["job_id"]
        claim(client)
        clock.advance(61)
        r = client.get(f"{API}?state=failed", headers=auth("admin"))  # listing checks too
        assert [j["job_id"] for j in r.json["items"]] == [job_id]
        assert "heartbeat_timeout_s is 60" in r.json["items"][0]["error"]
    finally:
        close_app(app)


def test_holder_rule(client, make_bundle):
    job_id = queue(client)["job_id"]
    claim(client, "t1")
    sha = upload_bundle(client, make_bundle(version="1.1.0")).json["sha256"]
    finish = {"model_name": "leuko", "model_version": "1.1.0", "sha256": sha}
    for action, body in (
        ("progress", {"phase": "train", "done": 1, "total": 2}),
        ("finish", finish),
        ("fail", {"error": "not mine"}),
    ):
        r = report(client, job_id, action, "t2", **body)
        assert r.status_code == 409 and r.json["error"]["code"] == "not_holder", action
        assert "held by trainer t1, not t2" in r.json["error"]["message"]
        r = report(client, "no-such-job", action, "t1", **body)
        assert r.status_code == 404, action
    job = show(client, job_id)
    assert (job["state"], job["progress"], job["worker"]) == ("running", None, "t1")
    assert report(client, job_id, "finish", "t1", **finish).json["state"] == "succeeded"


def test_claim_is_oldest_first_and_list_is_newest_first(client):
    ids = [queue(client, version=f"1.1.{i}")["job_id"] for i in range(4)]
    assert claim(client, "t1").json["job_id"] == ids[0]
    r = client.get(f"{API}?state=queued", headers=auth("trainer"))
    assert [j["job_id"] for j in r.json["items"]] == ids[:0:-1]
    r = client.get(f"{API}?limit=2", headers=auth("admin"))
    assert [j["job_id"] for j in r.json["items"]] == [ids[3], ids[2]]
    r = client.post(f"{API}/claim", json={"worker": "t9"}, headers=auth("admin"))  # admin may claim too
    assert r.status_code == 200 and r.json["job_id"] == ids[1]


def test_claim_answers_204_with_no_body_when_nothing_is_queued(client):
    r = claim(client)
    assert r.status_code == 204 and r.data == b""


def claim_concurrently(app: Flask, workers: int, jobs: int) -> Counter[str]:
    """Queue ``jobs`` jobs, then let ``workers`` threads claim (and end) jobs until the queue is
    empty, all starting at once. Returns how often each job id was claimed."""
    client = app.test_client()
    for i in range(jobs):
        queue(client, version=f"2.0.{i}")
    claims: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(workers)
    errors: list[str] = []

    def work(n: int) -> None:
        c = app.test_client()
        worker = f"w{n}"
        start.wait()
        while True:
            r = claim(c, worker)
            if r.status_code == 204:
                return
            if r.status_code != 200:
                errors.append(f"{worker}: HTTP {r.status_code} {r.json}")
                return
            with lock:
                claims[r.json["job_id"]] += 1
            done = report(c, r.json["job_id"], "fail", worker, error=f"ended by {worker}")
            if done.status_code != 200:
                errors.append(f"{worker}: fail HTTP {done.status_code} {done.json}")
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    listed = client.get(f"{API}?limit=1000", headers=auth("admin")).json["items"]
    assert len(listed) == jobs and {j["state"] for j in listed} == {"failed"}
    # each job ended by the worker that claimed it: nobody else ever held it
    assert all(j["error"] == f"ended by {j['worker']}" for j in listed)
    return claims


def test_concurrent_claims_on_sqlite_take_each_job_once(app):
    claims = claim_concurrently(app, workers=4, jobs=12)
    assert len(claims) == 12 and set(claims.values()) == {1}
