"""The training-job queue on real PostgreSQL: concurrent trainers claim every job exactly once,
concurrent operators can't queue the same model version twice (the partial unique index), and a
restarted or silent trainer's job ends as on SQLite."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from flask import Flask

from hub.app import close_app, create_app
from hub.db.migrate import upgrade
from hub.db.session import Database
from hub.extensions import hub_ext
from tests.hub.conftest import FakeClock, auth, hub_config
from tests.hub.test_training_jobs import API, SPEC, claim, claim_concurrently, queue, show

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_app(tmp_path, postgres_url) -> Iterator[Flask]:
    config = hub_config(tmp_path, None, database_url=postgres_url)
    db = Database(config.db_url)
    upgrade(db)
    db.dispose()
    app = create_app(config)
    try:
        yield app
    finally:
        close_app(app)


def test_concurrent_claims_take_each_job_exactly_once(pg_app):
    claims = claim_concurrently(pg_app, workers=8, jobs=40)
    assert len(claims) == 40 and set(claims.values()) == {1}


def test_concurrent_queues_of_one_version_create_one_job(pg_app):
    n = 8
    start = threading.Barrier(n)
    statuses: list[int] = []

    def post() -> None:
        c = pg_app.test_client()
        start.wait()
        statuses.append(c.post(API, json=SPEC, headers=auth("admin")).status_code)

    threads = [threading.Thread(target=post) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == [201] + [409] * (n - 1)
    items = pg_app.test_client().get(API, headers=auth("admin")).json["items"]
    assert len(items) == 1 and items[0]["state"] == "queued"


def test_restart_and_stale_heartbeat_end_jobs_on_postgresql(pg_app):
    client = pg_app.test_client()
    hub_ext.for_app(pg_app).training.clock = clock = FakeClock()
    a = queue(client)["job_id"]
    b = queue(client, version="1.1.1")["job_id"]
    assert claim(client, "t1").json["job_id"] == a
    assert client.post(f"{API}/{a}/cancel", headers=auth("admin")).json["cancel_requested"] is True
    assert claim(client, "t1").json["job_id"] == b  # t1 restarted: a was asked to stop, so cancelled
    assert show(client, a)["state"] == "cancelled" and "trainer t1 restarted" in show(client, a)["error"]
    clock.advance(1801)
    job = show(client, b)
    assert job["state"] == "failed" and job["error"].startswith("no progress from trainer t1 for 1801 s")
