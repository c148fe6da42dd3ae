"""MQTT ingest against a private Mosquitto: dedupe, invalid payloads, PUBACK only after commit."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification, ModelEventRecord
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.schemas import AgentState, AgentStatus, ModelEvent, ModelEventKind
from tests.conftest import wait_until
from tests.hub.conftest import as_json, hub_config, make_result, publish_all, raw


@pytest.fixture
def ingest_env(tmp_path, private_broker):
    cfg = hub_config(
        tmp_path,
        None,
        mqtt={
            "host": "127.0.0.1",
            "port": private_broker.port,
            "client_id": f"ingest-{uuid.uuid4().hex[:8]}",
        },
        ingest={"batch_size": 10, "batch_ms": 50},
    )
    db = Database(cfg.db_url)
    upgrade(db)
    workers: list[IngestWorker] = []

    def start(**kw) -> IngestWorker:
        w = IngestWorker(cfg, db, IngestStats(), **kw)
        w.start()
        workers.append(w)
        assert w.wait_connected(10), "ingest worker did not connect"
        return w

    yield cfg, db, start, private_broker
    for w in workers:
        w.stop()
    db.dispose()


def count(db, model) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def test_duplicate_result_is_stored_once_and_invalid_ones_are_counted(ingest_env):
    cfg, db, start, broker = ingest_env
    worker = start()
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    res = make_result(agent_id=agent)
    results_topic = topics.build(agent, topics.Kind.RESULTS)
    bad_schema = res.model_dump(mode="json") | {"confidence": 7}
    status = AgentStatus(
        agent_id=agent,
        state=AgentState.ONLINE,
        lab="Lab A",
        model_name="leuko",
        model_version="1.0.0",
        device="CPU",
    )
    event = ModelEvent(
        agent_id=agent, event=ModelEventKind.ACTIVATED, model_name="leuko", model_version="1.1.0"
    )
    after = make_result(agent_id=agent, label="normal")
    publish_all(
        broker.port,
        [
            (results_topic, as_json(res), False),
            (results_topic, as_json(res), False),  # QoS 1 redelivery look-alike
            (results_topic, b"{not json", False),  # bad JSON
            (results_topic, b"[1, 2]", False),  # JSON but not an object
            (results_topic, raw(bad_schema), False),  # schema error
            ("leukonet/v1/agents/-bad/results", as_json(res), False),  # topic outside the grammar
            (topics.build("someone-else", topics.Kind.RESULTS), as_json(res), False),  # agent id mismatch
            (topics.build(agent, topics.Kind.STATUS), as_json(status), True),
            (topics.build(agent, topics.Kind.EVENTS), as_json(event), False),
            (results_topic, as_json(after), False),  # still ingesting after the bad ones
        ],
    )
    stats = worker.stats
    wait_until(lambda: stats.snapshot()["stored"] == 2 and stats.snapshot()["events"] == 1)
    snap = stats.snapshot()
    assert snap["received"] == 10
    assert snap["duplicates"] == 1
    assert snap["invalid"] == {"bad_json": 2, "schema": 1, "bad_topic": 1, "agent_mismatch": 1}
    assert snap["statuses"] == 1
    assert count(db, Classification) == 2
    with db.session() as s:
        ids = set(s.scalars(select(Classification.result_id)))
        row = s.scalar(select(Agent).where(Agent.agent_id == agent))
        assert row is not None
        assert (row.state, row.lab, row.device) == ("online", "Lab A", "CPU")
        assert row.model_version == "1.1.0"  # the activated event came after the status
        assert s.scalar(select(func.count()).select_from(ModelEventRecord)) == 1
    assert ids == {res.result_id, after.result_id}


def test_acks_are_sent_so_nothing_is_redelivered(ingest_env):
    cfg, db, start, broker = ingest_env
    worker = start()
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    topic = topics.build(agent, topics.Kind.RESULTS)
    publish_all(broker.port, [(topic, as_json(make_result(agent_id=agent)), False) for _ in range(5)])
    wait_until(lambda: worker.stats.snapshot()["stored"] == 5)
    worker.stop()
    again = start()  # same client id: the broker resumes the persistent session
    publish_all(broker.port, [(topic, as_json(make_result(agent_id=agent)), False)])
    wait_until(lambda: again.stats.snapshot()["stored"] == 1)
    assert again.stats.snapshot()["received"] == 1, "acknowledged messages must not come back"
    assert count(db, Classification) == 6


def test_uncommitted_results_are_not_acked_and_come_back(ingest_env, monkeypatch):
    cfg, db, start, broker = ingest_env
    attempts = []

    def broken(self, messages):
        attempts.append(len(messages))
        raise OperationalError("INSERT", {}, Exception("database is down"))

    monkeypatch.setattr(IngestWriter, "write", broken)
    worker = start()
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    msgs = [make_result(agent_id=agent) for _ in range(3)]
    publish_all(broker.port, [(topics.build(agent, topics.Kind.RESULTS), as_json(m), False) for m in msgs])
    wait_until(lambda: worker.stats.snapshot()["db_errors"] >= 1)
    assert worker.stats.snapshot()["received"] == 3
    worker.stop()  # gives up on the batch without acknowledging it
    assert count(db, Classification) == 0
    monkeypatch.undo()
    recovered = start()  # the broker redelivers the unacknowledged messages to the session
    wait_until(lambda: recovered.stats.snapshot()["stored"] == 3)
    with db.session() as s:
        assert set(s.scalars(select(Classification.result_id))) == {m.result_id for m in msgs}


def test_writer_dedupes_within_batch_and_against_db(tmp_path):
    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    try:
        w = IngestWriter(db)
        a, b = make_result(), make_result()
        first = w.write([a, a, b])
        assert (first.stored, first.duplicates) == (2, 1)
        second = w.write([a, make_result()])
        assert (second.stored, second.duplicates) == (1, 1)
        assert count(db, Classification) == 3
    finally:
        db.dispose()


def test_offline_last_will_applies_after_online(tmp_path):
    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    try:
        w = IngestWriter(db)
        will = AgentStatus(agent_id="s1", state=AgentState.OFFLINE)  # built when the agent connected
        online = AgentStatus(agent_id="s1", state=AgentState.ONLINE, model_version="1.0.0", model_name="m")
        w.write([online])
        w.write([will])
        with db.session() as s:
            agent = s.scalar(select(Agent).where(Agent.agent_id == "s1"))
            assert agent is not None and agent.state == "offline" and agent.last_seen is not None
    finally:
        db.dispose()


def test_the_precision_that_ran_is_stored_and_served(tmp_path):
    from hub.api.serialize import agent_json, classification_json

    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    try:
        w = IngestWriter(db)
        v2 = make_result(agent_id="p1", precision="BF16", execution_precision="bf16")
        v1 = make_result(agent_id="p1", schema_version=1)  # an agent not yet upgraded
        status = AgentStatus(
            agent_id="p1", state=AgentState.ONLINE, precision="FP32", execution_precision="f32"
        )
        assert w.write([v2, v1, status]).stored == 2
        with db.session() as s:
            rows = {r.result_id: classification_json(r) for r in s.scalars(select(Classification))}
            agent = agent_json(s.scalar(select(Agent).where(Agent.agent_id == "p1")))
        assert (rows[v2.result_id]["precision"], rows[v2.result_id]["execution_precision"]) == (
            "BF16",
            "bf16",
        )
        assert (rows[v1.result_id]["precision"], rows[v1.result_id]["execution_precision"]) == (None, None)
        assert (agent["precision"], agent["execution_precision"]) == ("FP32", "f32")
    finally:
        db.dispose()


def test_poison_messages_are_counted_acked_and_never_stop_ingest(ingest_env, monkeypatch):
    """Against a real Mosquitto: nesting bombs on every agent topic kind, NaN, oversized payloads and a
    bug in validation itself are counted by reason and acknowledged; the valid result after them is
    stored, and after a restart on the same persistent session nothing is redelivered."""
    import hub.ingest.committer as committer_module

    real_parse = committer_module.parse_payload

    def parse_with_a_bug(kind, payload):
        if payload == b'{"trigger": "bug"}':
            raise RuntimeError("a bug in validation")
        return real_parse(kind, payload)

    monkeypatch.setattr(committer_module, "parse_payload", parse_with_a_bug)
    cfg, db, start, broker = ingest_env
    worker = start()
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    results = topics.build(agent, topics.Kind.RESULTS)
    nan = as_json(make_result(agent_id=agent)).replace(b'"confidence":0.9', b'"confidence":NaN')
    huge = raw(
        make_result(agent_id=agent).model_dump(mode="json")
        | {"probabilities": {f"k{i}": 0.0 for i in range(100_000)}}
    )
    poison = [
        *[(topics.build(agent, kind), b"[" * 10_000, False) for kind in topics.AGENT_KINDS],
        (results, b'{"a": ' + b"[" * 1_000 + b"]" * 1_000 + b"}", False),
        (results, nan, False),
        (results, huge, False),
        (results, b'{"trigger": "bug"}', False),
    ]
    valid = make_result(agent_id=agent)
    publish_all(broker.port, [*poison, (results, as_json(valid), False)])
    wait_until(lambda: worker.stats.snapshot()["stored"] == 1)
    snap = worker.stats.snapshot()
    assert snap["received"] == len(poison) + 1
    # 10,000 brackets fit the 16 KiB result/event limits (refused by the nesting limit: bad_json) but
    # not the 8 KiB status limit (too_large).
    assert snap["invalid"] == {"too_large": 2, "bad_json": 3, "schema": 1, "internal_error": 1}
    assert count(db, Classification) == 1
    worker.stop()
    again = start()  # the same persistent session: poison messages were acknowledged, so none comes back
    after = make_result(agent_id=agent)
    publish_all(broker.port, [(results, as_json(after), False)])
    wait_until(lambda: again.stats.snapshot()["stored"] == 1)
    assert again.stats.snapshot()["received"] == 1 and again.stats.snapshot()["invalid_total"] == 0
    assert count(db, Classification) == 2


def test_a_failing_reconciliation_hook_is_counted_and_ingest_goes_on(ingest_env):
    cfg, db, start, broker = ingest_env
    calls = []

    def broken_hook(reports):
        calls.append(len(reports))
        raise RuntimeError("rollout engine bug")

    worker = start(on_commit=broken_hook)
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    status = AgentStatus(agent_id=agent, state=AgentState.ONLINE)
    publish_all(broker.port, [(topics.build(agent, topics.Kind.STATUS), as_json(status), True)])
    wait_until(lambda: worker.stats.snapshot()["reconcile_errors"] == 1)
    publish_all(
        broker.port, [(topics.build(agent, topics.Kind.RESULTS), as_json(make_result(agent_id=agent)), False)]
    )
    wait_until(lambda: worker.stats.snapshot()["stored"] == 1)
    loops = worker.stats.snapshot()["loops"]
    assert loops["ingest-writer"]["alive"] and loops["ingest-writer"]["restarts"] == 0
    assert loops["ingest-mqtt"]["alive"] and loops["ingest-mqtt"]["last_activity_age_s"] is not None
    worker.stop()
    assert worker.stats.loops.dead() == ["ingest-mqtt", "ingest-writer"]


def test_a_live_worker_times_its_batches_and_the_lag_of_each_result(ingest_env):
    cfg, db, start, broker = ingest_env
    worker = start()
    agent = f"scope-{uuid.uuid4().hex[:6]}"
    topic = topics.build(agent, topics.Kind.RESULTS)
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    sent = [make_result(agent_id=agent, captured_at=old) for _ in range(25)]
    publish_all(broker.port, [(topic, as_json(r), False) for r in [*sent, sent[0]]])
    wait_until(lambda: worker.stats.snapshot()["stored"] == 25 and worker.stats.snapshot()["duplicates"] == 1)
    lags = worker.stats.lag_seconds.collect()[0].samples
    count = next(s.value for s in lags if s.name.endswith("_count"))
    total = next(s.value for s in lags if s.name.endswith("_sum"))
    assert count == 25  # one per stored result, none for the duplicate
    assert 600 <= total / count < 700
    batches = worker.stats.snapshot()["batches"]
    for h in (worker.stats.batch_seconds, worker.stats.commit_seconds):
        assert next(s.value for s in h.collect()[0].samples if s.name.endswith("_count")) == batches
