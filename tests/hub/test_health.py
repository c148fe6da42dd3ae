"""/healthz tells the truth about this process's ingest loops: 503 when ingest is not running here or
one of its loops is dead, with the problem named; each loop's liveness and restarts are listed."""

from __future__ import annotations

import threading

from hub.app import close_app, create_app
from hub.db.migrate import upgrade
from hub.db.session import Database
from hub.ingest.stats import IngestStats
from hub.services import build_services
from tests.conftest import wait_until
from tests.hub.conftest import hub_config


def app_with(tmp_path, stats):
    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    db.dispose()
    return create_app(cfg, build_services(cfg, ingest_stats=stats))


def test_a_web_only_process_reports_ingest_as_elsewhere(tmp_path):
    app = app_with(tmp_path, None)
    try:
        body = app.test_client().get("/healthz").json
        assert body["status"] == "ok" and body["ingest"] == {"running": False, "in_process": False}
    finally:
        close_app(app)


def test_in_process_ingest_that_is_not_running_or_has_a_dead_loop_is_503(tmp_path):
    stats = IngestStats()
    app = app_with(tmp_path, stats)
    try:
        client = app.test_client()
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json["problems"] == ["ingest is not running"]
        stats.set_flags(running=True)
        stop = threading.Event()
        stats.loops.spawn("ingest-writer", stop.wait, stop)
        stats.loops.watch("ingest-mqtt", lambda: True)
        assert wait_until(lambda: client.get("/healthz").status_code == 200)
        stop.set()  # the writer loop ends: ingest runs no longer
        assert wait_until(lambda: client.get("/healthz").status_code == 503)
        body = client.get("/healthz").json
        assert body["problems"] == ["ingest loop(s) not running: ingest-writer"]
        assert body["ingest"]["loops"]["ingest-writer"]["alive"] is False
        assert body["ingest"]["loops"]["ingest-mqtt"]["alive"] is True
    finally:
        close_app(app)


def test_an_unexpected_error_is_500_json_counted_by_route(tmp_path):
    app = app_with(tmp_path, None)
    app.add_url_rule("/api/v1/boom/<x>", "boom", lambda x: 1 / 0)
    try:
        client = app.test_client()
        for _ in range(2):
            r = client.get("/api/v1/boom/1")
            assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"
        assert client.get("/healthz").json["request_errors"] == {"GET /api/v1/boom/<x>": 2}
    finally:
        close_app(app)
