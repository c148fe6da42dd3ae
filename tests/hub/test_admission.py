"""Ingest takes messages only from registered agents (unless auto-registration is on) and results only
with the labels the registry holds for their model version; the rest is refused and counted."""

from __future__ import annotations

import uuid

from click.testing import CliRunner
from sqlalchemy import func, select

from hub.cli import cli as hub_cli
from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification, ModelVersion
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.admission import Admission
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.schemas import AgentState, AgentStatus, ModelEvent, ModelEventKind
from tests.conftest import wait_until
from tests.hub.conftest import as_json, hub_config, make_result, publish_all


def database(tmp_path) -> Database:
    db = Database(hub_config(tmp_path, None).db_url)
    upgrade(db)
    return db


def stored(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Classification)) or 0)


def test_unknown_agents_are_refused_until_registered(tmp_path):
    db = database(tmp_path)
    try:
        writer = IngestWriter(db, Admission(auto_register=False))
        messages = [
            make_result(agent_id="stranger"),
            AgentStatus(agent_id="stranger", state=AgentState.ONLINE),
            ModelEvent(
                agent_id="stranger", event=ModelEventKind.ACTIVATED, model_name="m", model_version="1.0.0"
            ),
        ]
        outcome = writer.write(messages)
        assert (outcome.stored, outcome.statuses, outcome.events) == (0, 0, 0)
        assert outcome.refused == {"unknown_agent": 3}
        with db.session() as s:
            assert s.scalar(select(Agent).where(Agent.agent_id == "stranger")) is None  # not auto-registered
        with db.transaction() as s:
            s.add(Agent(agent_id="stranger", lab="Lab A", state="unknown", vitals={}))
        outcome = writer.write([make_result(agent_id="stranger")])
        assert outcome.stored == 1 and not outcome.refused
    finally:
        db.dispose()


def test_results_must_carry_the_registry_labels_of_their_model(tmp_path):
    db = database(tmp_path)
    try:
        with db.transaction() as s:
            s.add(
                ModelVersion(
                    name="leuko",
                    version="1.0.0",
                    sha256="b" * 64,
                    manifest={"labels": ["ALL", "normal"]},
                    storage_path="bb/x.zip",
                    size_bytes=1,
                    uploaded_by="test",
                )
            )
        writer = IngestWriter(db, Admission(auto_register=True))
        good = make_result(model_name="leuko", model_version="1.0.0")
        wrong = make_result(model_name="leuko", model_version="1.0.0", label="ALL")
        wrong = wrong.model_copy(update={"probabilities": {"ALL": 0.9, "AML": 0.1}})
        unknown_model = make_result(model_name="leuko", model_version="9.9.9", label="ALL")
        unknown_model = unknown_model.model_copy(update={"probabilities": {"ALL": 0.9, "AML": 0.1}})
        outcome = writer.write([good, wrong, unknown_model])
        assert outcome.stored == 2 and outcome.refused == {"labels_mismatch": 1}
    finally:
        db.dispose()


def test_a_live_worker_counts_unknown_agents(tmp_path, private_broker):
    mqtt = {"host": "127.0.0.1", "port": private_broker.port, "client_id": f"adm-{uuid.uuid4().hex[:8]}"}
    cfg = hub_config(tmp_path, None, mqtt=mqtt, ingest={"auto_register_agents": False})
    db = Database(cfg.db_url)
    upgrade(db)
    worker = IngestWorker(cfg, db, IngestStats())
    worker.start()
    try:
        assert worker.wait_connected(10)
        agent = f"scope-{uuid.uuid4().hex[:6]}"
        topic = topics.build(agent, topics.Kind.RESULTS)
        publish_all(private_broker.port, [(topic, as_json(make_result(agent_id=agent)), False)])
        wait_until(lambda: worker.stats.snapshot()["invalid"].get("unknown_agent") == 1)
        assert stored(db) == 0
    finally:
        worker.stop()
        db.dispose()


def test_hub_agents_add_registers_once_and_lists(tmp_path):
    path = tmp_path / "hub.yaml"
    path.write_text(f"data_dir: {tmp_path / 'hub'}\n")
    runner = CliRunner()
    assert runner.invoke(hub_cli, ["migrate", "--config", str(path)]).exit_code == 0
    r = runner.invoke(hub_cli, ["agents", "add", "lab1-scope1", "--lab", "lab1", "--config", str(path)])
    assert r.exit_code == 0 and "agent lab1-scope1 registered (lab lab1)" in r.output
    r = runner.invoke(hub_cli, ["agents", "add", "lab1-scope1", "--config", str(path)])
    assert r.exit_code == 0 and "already registered" in r.output
    r = runner.invoke(hub_cli, ["agents", "add", "bad/id", "--config", str(path)])
    assert r.exit_code == 2 and "AGENT_ID" in r.output
    r = runner.invoke(hub_cli, ["agents", "list", "--config", str(path)])
    assert r.exit_code == 0 and r.output.splitlines() == ["lab1-scope1\tlab1\tunknown\tnever"]
