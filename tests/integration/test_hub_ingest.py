"""Ingest against the real shared Mosquitto (127.0.0.1:1883) and a fresh PostgreSQL database."""

from __future__ import annotations

import logging
import uuid

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select, text

from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.schemas import AgentState, AgentStatus
from tests.conftest import wait_until
from tests.hub.conftest import as_json, hub_config, make_result, publish_all, raw
from tests.hub.test_ingest_writer import assert_concurrent_dedupe, assert_round_trip

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
        nul = make_result(agent_id=agent, image_name="nul\x00.png")  # valid JSON, refused by PostgreSQL
        status = AgentStatus(agent_id=agent, state=AgentState.ONLINE, lab="IT lab")
        publish_all(
            shared_broker.port,
            [
                (topic, as_json(res), False),
                (topic, as_json(res), False),
                (topic, b"\xff\xfe not json", False),
                (topic, raw({"schema_version": 1, "agent_id": agent}), False),
                (f"leukonet/v1/agents/_{run}/results", as_json(res), False),  # agent ids start alphanumeric
                *[(topic, as_json(m), False) for m in others[:10]],
                (topic, as_json(nul), False),
                *[(topic, as_json(m), False) for m in others[10:]],
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
        # the batch holding the NUL failed as a whole and was retried one message per transaction
        assert snap["invalid"] == {"bad_json": 1, "schema": 1, "bad_topic": 1, "db_rejected": 1}
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


def test_set_based_writer_round_trips_and_dedupes_concurrent_writers_on_postgres(postgres_url):
    first, second = Database(postgres_url), Database(postgres_url)
    upgrade(first)
    try:
        assert_round_trip(first)
        assert_concurrent_dedupe(first, second)
    finally:
        first.dispose()
        second.dispose()


def test_a_kept_connection_the_database_dropped_is_replaced_without_an_error(postgres_url, caplog):
    db = Database(postgres_url)
    upgrade(db)
    writer = IngestWriter(db, keep_connection=True)
    try:
        assert writer.write([make_result(agent_id="kept")]).stored == 1
        with db.engine.connect() as conn:  # as a restarted database would: every other session ends
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        with caplog.at_level(logging.INFO, logger="hub.ingest.writer"):
            assert writer.write([make_result(agent_id="kept")]).stored == 1
        assert "ingest_db_reconnect" in caplog.text
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Classification)) == 2
    finally:
        writer.close()
        db.dispose()


def clear_session(port: int, client_id: str) -> None:
    """Drop our persistent session so the shared broker does not queue messages for it forever."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.disconnect()
    c.loop_stop()
