"""The dashboard's training page through the test client: the job table, the queue form (CSRF,
validation errors flashed naming the field, audited with the person's name) and the Cancel buttons,
shown to operators and admins only (others read the table and get 403 for the actions)."""

from __future__ import annotations

import re

import pytest

from tests.hub.conftest import auth, csrf, login, login_as, upload_bundle
from tests.hub.test_training_jobs import claim, report

FORM = {
    "name": "leuko",
    "version": "1.1.0",
    "dataset": "all-idb2-import",
    "mode": "scratch",
    "steps": "",
    "batch_size": "",
    "learning_rate": "",
    "image_size": "",
    "depth_multiplier": "",
    "seed": "",
    "checkpoint": "",
}


def jobs(client) -> list[dict]:
    items: list[dict] = client.get("/api/v1/training-jobs", headers=auth("admin")).json["items"]
    return items


def test_training_page_needs_a_session_and_is_in_the_nav(client):
    r = client.get("/training")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.post("/training", data=FORM).status_code == 302  # to the login page, nothing queued
    assert jobs(client) == []
    login(client)
    for path in ("/", "/models", "/rollouts", "/training"):
        assert 'href="/training">Training</a>' in client.get(path).data.decode(), path


def test_queue_form_checks_csrf_validates_and_audits(client):
    login(client)
    html = client.get("/training").data.decode()
    assert 'id="queue-form"' in html and "No training jobs yet" in html and "training.js" in html
    assert 'placeholder="1000"' in html and 'placeholder="0.001"' in html  # the spec's defaults
    token = csrf(html)
    assert client.post("/training", data=FORM).status_code == 400
    assert client.post("/training", data={**FORM, "csrf_token": "x" * 43}).status_code == 400
    assert jobs(client) == []

    r = client.post("/training", data={**FORM, "dataset": "/srv/data", "steps": "0", "csrf_token": token})
    assert r.status_code == 422
    page = r.data.decode()
    notice = re.search(r'<p class="notice" role="status">(.*?)</p>', page, re.S).group(1)
    assert notice.startswith("Not queued:") and "dataset:" in notice and "steps:" in notice
    assert 'value="/srv/data"' in page  # the form keeps what was typed
    r = client.post("/training", data={**FORM, "checkpoint": "inception_v3.ckpt", "csrf_token": token})
    assert r.status_code == 422 and "mode scratch trains without a checkpoint" in r.data.decode()
    assert jobs(client) == []

    assert 'id="f-int8" name="int8" type="checkbox"' in page
    r = client.post(
        "/training",
        data={**FORM, "steps": "250", "learning_rate": "0.02", "int8": "true", "csrf_token": token},
    )
    assert r.status_code == 302
    page = client.get(r.headers["Location"]).data.decode()
    [job] = jobs(client)
    assert f"queued: leuko 1.1.0 (job {job['job_id']})" in page
    assert (job["state"], job["created_by"], job["spec"]["steps"], job["spec"]["learning_rate"]) == (
        "queued",
        "admin",
        250,
        0.02,
    )
    assert job["spec"]["batch_size"] == 16  # left empty: the default
    assert job["spec"]["int8"] is True
    assert f'data-job="{job["job_id"]}"' in page and "all-idb2-import" in page
    entry = client.get("/api/v1/audit", headers=auth("admin")).json["items"][0]
    assert (entry["actor"], entry["action"], entry["subject"]) == (
        "admin",
        "training.queue",
        f"training-job/{job['job_id']}",
    )
    r = client.post("/training", data={**FORM, "csrf_token": token})
    assert r.status_code == 409 and "already produces model leuko 1.1.0" in r.data.decode()
    assert len(jobs(client)) == 1


def test_cancel_buttons_progress_errors_and_model_links(client, make_bundle):
    login(client)
    token = csrf(client.get("/training").data.decode())
    for version in ("1.1.0", "1.2.0", "1.3.0", "1.4.0"):
        client.post("/training", data={**FORM, "version": version, "csrf_token": token})
    first, second, third, fourth = (j["job_id"] for j in reversed(jobs(client)))
    claim(client, "t1")  # first
    report(client, first, "progress", "t1", phase="train", done=30, total=120, eta_s=600)
    claim(client, "t2")  # second
    report(client, second, "fail", "t2", error="<script>alert(1)</script> no images found")
    claim(client, "t3")  # third
    sha = upload_bundle(client, make_bundle(version="1.3.0")).json["sha256"]
    report(
        client,
        third,
        "finish",
        "t3",
        model_name="leuko",
        model_version="1.3.0",
        sha256=sha,
        metrics={"accuracy": 0.9375},
    )

    page = client.get("/training").data.decode()
    assert "train 25% (30/120) · ETA 10 min" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; no images found" in page and "<script>alert(1)" not in page
    assert 'href="/models#model-leuko-1.3.0"' in page and "0.9375" in page
    assert 'id="model-leuko-1.3.0"' in client.get("/models").data.decode()
    assert page.count('class="cancel"') == 2  # the running first and the queued fourth

    r = client.post(f"/training/{first}/cancel", data={"csrf_token": token}, follow_redirects=True)
    assert "cancel: requested" in r.data.decode() and "cancel requested" in r.data.decode()
    r = client.post(f"/training/{fourth}/cancel", data={"csrf_token": token}, follow_redirects=True)
    assert f"cancel: job {fourth} cancelled" in r.data.decode()
    r = client.post(f"/training/{third}/cancel", data={"csrf_token": token}, follow_redirects=True)
    assert "cancel refused: training job" in r.data.decode() and "is succeeded" in r.data.decode()
    assert client.post(f"/training/{first}/cancel").status_code == 400  # no CSRF token
    states = {j["job_id"]: (j["state"], j["cancel_requested"]) for j in jobs(client)}
    assert states == {
        first: ("running", True),
        second: ("failed", False),
        third: ("succeeded", False),
        fourth: ("cancelled", False),
    }
    actors = [
        (a["actor"], a["action"]) for a in client.get("/api/v1/audit", headers=auth("admin")).json["items"]
    ]
    assert actors.count(("admin", "training.cancel")) == 2


@pytest.mark.parametrize("role", ["viewer", "reviewer"])
def test_readers_see_jobs_but_no_queue_form_or_cancel(app, client, role):
    login(client)
    token = csrf(client.get("/training").data.decode())
    assert client.post("/training", data={**FORM, "csrf_token": token}).status_code == 302
    [job] = jobs(client)
    login_as(app, client, role)
    page = client.get("/training").data.decode()
    assert f'data-job="{job["job_id"]}"' in page  # the table is there
    assert 'id="queue-form"' not in page and 'class="cancel"' not in page
    assert 'data-csrf=""' in page  # training.js draws no Cancel button either
    token = csrf(page)
    queued = client.post("/training", data={**FORM, "version": "9.9.9", "csrf_token": token})
    assert queued.status_code == 403
    cancelled = client.post(f"/training/{job['job_id']}/cancel", data={"csrf_token": token})
    assert cancelled.status_code == 403
    assert [(j["state"], j["spec"]["version"]) for j in jobs(client)] == [("queued", "1.1.0")]


def test_an_operator_queues_and_is_the_audit_actor(app, client):
    login_as(app, client, "operator")
    page = client.get("/training").data.decode()
    assert 'id="queue-form"' in page
    r = client.post("/training", data={**FORM, "csrf_token": csrf(page)})
    assert r.status_code == 302
    [job] = jobs(client)
    assert job["created_by"] == "operator"
