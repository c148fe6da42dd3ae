"""``GET /metrics``: readers only (401 / 403 JSON otherwise), parsed by the Prometheus client's own
parser, with values that follow ingest activity, the database's rollouts, targets, training jobs
and agents, and the request errors; once with a real ingest worker on the shared Mosquitto."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from hub.app import close_app, create_app
from hub.cli import cli as hub_cli
from hub.db.migrate import upgrade
from hub.db.models import Rollout, RolloutTarget, TrainingJob
from hub.db.session import Database
from hub.extensions import hub_ext
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.writer import IngestWriter
from hub.services import build_services
from shared import topics
from shared.schemas import AgentState, AgentStatus
from tests.conftest import wait_until
from tests.hub.conftest import as_json, auth, hub_config, make_result, publish_all

Samples = dict[str, list[tuple[dict[str, str], float]]]


def app_with(config: Any, stats: IngestStats | None) -> Flask:
    db = Database(config.db_url)
    upgrade(db)
    db.dispose()
    return create_app(config, build_services(config, ingest_stats=stats))


def scrape(app: Flask, headers: dict[str, str] | None = None) -> Samples:
    """``{sample name: [(labels, value), ...]}``, parsed by prometheus_client's text parser."""
    r = app.test_client().get("/metrics", headers=headers or auth("admin"))
    assert r.status_code == 200, r.data
    assert r.mimetype == "text/plain"
    samples: Samples = {}
    for family in text_string_to_metric_families(r.data.decode()):
        assert family.name.startswith("leukonet_"), family.name
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: Samples, name: str, /, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


def test_metrics_need_a_reading_role(app, tmp_path: Path):
    client = app.test_client()
    r = client.get("/metrics")
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="leukonet"'
    r = client.get("/metrics", headers=auth("agent"))
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden"
    # what docs/operations.md tells the operator to give Prometheus
    config = hub_ext.for_app(app).config
    path = tmp_path / "cli.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(config.data_dir),
                "database_url": config.database_url,
                "secret_key": config.require_secret_key(),
            }
        )
    )
    made = CliRunner().invoke(
        hub_cli, ["tokens", "create", "--name", "prometheus", "--role", "viewer", "--config", str(path)]
    )
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    samples = scrape(app, {"Authorization": f"Bearer {token}"})
    assert value(samples, "leukonet_database_up") == 1


def test_a_web_only_process_exports_no_ingest_families(tmp_path: Path):
    app = app_with(hub_config(tmp_path, None), None)
    try:
        samples = scrape(app)
        assert not [name for name in samples if name.startswith("leukonet_ingest_")]
        assert value(samples, "leukonet_agents", state="online") == 0
    finally:
        close_app(app)


def test_values_follow_ingest_and_the_database(tmp_path: Path):
    stats = IngestStats()
    app = app_with(hub_config(tmp_path, None), stats)
    app.add_url_rule("/api/v1/boom/<x>", "boom", lambda x: 1 / 0)
    try:
        before = scrape(app)
        assert value(before, "leukonet_ingest_stored_total") == 0
        assert value(before, "leukonet_ingest_lag_seconds_count") == 0
        assert "leukonet_ingest_last_commit_timestamp_seconds" not in before
        assert "leukonet_request_errors_total" not in before

        # one batch as the worker handles it: received, validated, written, counted, timed
        services = hub_ext.for_app(app)
        first = make_result(agent_id="scope-1")
        batch = [
            first,
            first,
            make_result(agent_id="scope-1"),
            make_result(agent_id="scope-2"),
            AgentStatus(agent_id="scope-1", state=AgentState.ONLINE, lab="Lab A"),
            AgentStatus(agent_id="scope-2", state=AgentState.OFFLINE, lab="Lab A"),
        ]
        stats.add(received=len(batch) + 3)
        stats.add_invalid("bad_json")
        stats.add_invalid("unknown_agent", 2)
        outcome = IngestWriter(services.db).write(batch)
        assert (outcome.stored, outcome.duplicates) == (3, 1)
        stats.committed(outcome.stored, outcome.duplicates, outcome.statuses, outcome.events)
        stats.batch_seconds.observe(0.02)
        stats.commit_seconds.observe(0.004)
        for lag in (0.3, 2.0, 40.0):
            stats.lag_seconds.observe(lag)
        stats.set_flags(running=True, connected=True)

        with services.db.transaction() as s:
            for i, state in enumerate(("running", "completed", "completed")):
                s.add(rollout(f"r{i}", state))
            s.add_all(
                [
                    RolloutTarget(rollout_id="r0", agent_id="scope-1", stage=0, state="succeeded"),
                    RolloutTarget(rollout_id="r0", agent_id="scope-2", stage=1, state="pending"),
                ]
            )
            for i, state in enumerate(("queued", "failed", "failed", "succeeded")):
                s.add(job(f"1.0.{i}", state))
        client = app.test_client()
        assert client.get("/api/v1/boom/1").status_code == 500

        after = scrape(app)
        assert value(after, "leukonet_ingest_received_total") == 9
        assert value(after, "leukonet_ingest_stored_total") == 3
        assert value(after, "leukonet_ingest_duplicates_total") == 1
        assert value(after, "leukonet_ingest_statuses_total") == 2
        assert value(after, "leukonet_ingest_batches_total") == 1
        assert value(after, "leukonet_ingest_refused_total", reason="bad_json") == 1
        assert value(after, "leukonet_ingest_refused_total", reason="unknown_agent") == 2
        assert value(after, "leukonet_ingest_running") == 1 and value(after, "leukonet_ingest_connected") == 1
        assert value(after, "leukonet_ingest_last_commit_timestamp_seconds") > 1.7e9
        assert value(after, "leukonet_ingest_batch_seconds_count") == 1
        assert value(after, "leukonet_ingest_commit_seconds_sum") == pytest.approx(0.004)
        assert value(after, "leukonet_ingest_lag_seconds_bucket", le="1.0") == 1
        assert value(after, "leukonet_ingest_lag_seconds_bucket", le="5.0") == 2
        assert value(after, "leukonet_ingest_lag_seconds_bucket", le="+Inf") == 3
        assert value(after, "leukonet_agents", state="online") == 1
        assert value(after, "leukonet_agents", state="offline") == 1
        assert value(after, "leukonet_rollouts", state="running") == 1
        assert value(after, "leukonet_rollouts", state="completed") == 2
        assert value(after, "leukonet_rollouts", state="paused") == 0
        assert value(after, "leukonet_rollout_targets", state="succeeded") == 1
        assert value(after, "leukonet_rollout_targets", state="pending") == 1
        assert value(after, "leukonet_training_jobs", state="failed") == 2
        assert value(after, "leukonet_training_jobs", state="running") == 0
        assert value(after, "leukonet_request_errors_total", method="GET", route="/api/v1/boom/<x>") == 1
    finally:
        close_app(app)


def rollout(rollout_id: str, state: str) -> Rollout:
    return Rollout(
        rollout_id=rollout_id,
        model_name="leuko",
        model_version="2.0.0",
        state=state,
        target={"all": True},
        stages=[1, 100],
        success_threshold=0.9,
        error_threshold=0.2,
        on_failure="pause",
        timeout_s=600,
        created_by="test",
    )


def job(version: str, state: str) -> TrainingJob:
    return TrainingJob(
        job_id=str(uuid.uuid4()),
        state=state,
        model_name="leuko",
        model_version=version,
        spec={},
        created_by="test",
    )


def test_a_database_outage_still_answers_with_database_up_0(tmp_path: Path):
    stats = IngestStats()
    app = app_with(hub_config(tmp_path, None), stats)
    try:
        stats.add(received=5)
        (tmp_path / "hub" / "hub.db").unlink()
        (tmp_path / "hub" / "hub.db").mkdir()  # the database file cannot be opened any more
        hub_ext.for_app(app).db.dispose()
        samples = scrape(app)
        assert value(samples, "leukonet_database_up") == 0
        assert "leukonet_rollouts" not in samples
        assert value(samples, "leukonet_ingest_received_total") == 5
    finally:
        close_app(app)


def test_a_real_ingest_worker_on_the_shared_broker(tmp_path: Path, shared_broker):
    run = uuid.uuid4().hex[:8]
    config = hub_config(
        tmp_path,
        None,
        mqtt={
            "host": shared_broker.host,
            "port": shared_broker.port,
            "client_id": f"hub-metrics-{run}",
            "share_group": f"metrics{run}",  # our own group: other suites on this broker never see ours
        },
    )
    stats = IngestStats()
    app = app_with(config, stats)
    worker = IngestWorker(config, hub_ext.for_app(app).db, stats)
    worker.start()
    try:
        assert worker.wait_connected(10)
        agent = f"metrics-{run}"
        topic = topics.build(agent, topics.Kind.RESULTS)
        results = [make_result(agent_id=agent) for _ in range(5)]
        publish_all(
            shared_broker.port,
            [*[(topic, as_json(r), False) for r in results], (topic, b"{not json", False)],
            client_id=f"metrics-pub-{run}",
        )
        assert wait_until(lambda: stats.snapshot()["stored"] == 5, timeout=20)
        samples = scrape(app)
        assert value(samples, "leukonet_ingest_stored_total") == 5
        assert value(samples, "leukonet_ingest_received_total") == 6
        assert value(samples, "leukonet_ingest_refused_total", reason="bad_json") == 1
        assert value(samples, "leukonet_ingest_connected") == 1
        assert value(samples, "leukonet_ingest_loop_up", loop="ingest-writer") == 1
        assert value(samples, "leukonet_ingest_loop_restarts_total", loop="ingest-writer") == 0
        # the worker times its batches: at least one batch, one lag per stored result
        assert value(samples, "leukonet_ingest_batch_seconds_count") >= 1
        assert value(samples, "leukonet_ingest_commit_seconds_count") >= 1
        assert value(samples, "leukonet_ingest_lag_seconds_count") == 5
    finally:
        worker.stop()
        close_app(app)
        clear_session(shared_broker.port, f"hub-metrics-{run}")


def clear_session(port: int, client_id: str) -> None:
    """Drop our persistent session so the shared broker does not queue messages for it forever."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.disconnect()
    c.loop_stop()
