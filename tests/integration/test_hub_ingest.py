"""Ingest against the real shared Mosquitto (127.0.0.1:1883) and a fresh PostgreSQL database."""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.schemas import AgentState, AgentStatus
from tests.conftest import wait_until
from tests.hub.conftest import as_json, hub_config, make_result, publish_all, raw

pytestmark = pytest.mark.integration


def test_ingest_dedupes_and_survives_bad_payloads_on_postgres(tmp_path, shared_broker, postgres_url):
    run = uuid.uuid4().hex[:8]
    group = f"hubtest{run}"  # a share group of our own: other suites on the shared broker never see ours
    cfg = hub_config(
        tmp_path,
        None,
        database_url=postgres_url,
        mqtt={
            "host": shared_broker.host,
            "port": shared_broker.port,
            "client_id": f"hub-it-{run}",
            "share_group": group,
        },
        ingest={"batch_size": 20, "batch_ms": 50},
    )
    db = Database(cfg.db_url)
    upgrade(db)
    worker = IngestWorker(cfg, db, IngestStats())
    worker.start()
    try:
        assert worker.wait_connected(10)
        agent = f"it-{run}"
        res = make_result(agent_id=agent)
        topic = topics.build(agent, topics.Kind.RESULTS)
        others = [make_result(agent_id=agent) for _ in range(20)]
        status = AgentStatus(agent_id=agent, state=AgentState.ONLINE, lab="IT lab")
        publish_all(
            shared_broker.port,
            [
                (topic, as_json(res), False),
                (topic, as_json(res), False),
                (topic, b"\xff\xfe not json", False),
                (topic, raw({"schema_version": 1, "agent_id": agent}), False),
                (f"leukonet/v1/agents/_{run}/results", as_json(res), False),  # agent ids start alphanumeric
                *[(topic, as_json(m), False) for m in others],
                (topics.build(agent, topics.Kind.STATUS), as_json(status), False),
            ],
            client_id=f"it-pub-{run}",
        )
        wait_until(
            lambda: worker.stats.snapshot()["stored"] == 21 and worker.stats.snapshot()["statuses"] == 1,
            timeout=20,
        )
        snap = worker.stats.snapshot()
        assert snap["duplicates"] == 1
        assert snap["invalid"] == {"bad_json": 1, "schema": 1, "bad_topic": 1}
        with db.session() as s:
            n = s.scalar(
                select(func.count()).select_from(Classification).where(Classification.agent_id == agent)
            )
            assert n == 21
            row = s.scalar(select(Agent).where(Agent.agent_id == agent))
            assert row is not None and row.state == "online" and row.lab == "IT lab"
            stored = s.scalar(select(Classification).where(Classification.result_id == res.result_id))
            assert stored is not None and stored.captured_at == res.captured_at  # tz-aware round trip
        # ON CONFLICT DO NOTHING path: a row already in PostgreSQL is skipped, not an error
        again = IngestWriter(db).write([res, make_result(agent_id=agent)])
        assert (again.stored, again.duplicates) == (1, 1)
    finally:
        worker.stop()
        db.dispose()
        clear_session(shared_broker.port, f"hub-it-{run}")


def clear_session(port: int, client_id: str) -> None:
    """Drop our persistent session so the shared broker does not queue messages for it forever."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.disconnect()
    c.loop_stop()
