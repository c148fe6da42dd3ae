"""MQTT ingest against a private Mosquitto: dedupe, invalid payloads, PUBACK only after commit."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError

from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification, ModelEventRecord
from hub.db.session import Database
from hub.ingest import BatchOutcome, IngestStats, IngestWorker
from hub.ingest.batches import MIN_WINDOW, Batches, Incoming
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


# --- the set-based writer, the batches and the histograms ------------------------------------


def statements(db: Database) -> list[str]:
    """Every SQL statement ``db`` sends from now on (a list that fills as they go)."""
    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cur, sql, *a: sent.append(sql))
    return sent


def test_agents_are_touched_once_per_batch_and_labs_filled_in(tmp_path):
    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    try:
        with db.transaction() as s:
            s.add_all(
                [
                    Agent(agent_id="old", lab="Lab A", state="unknown", vitals={}),
                    Agent(agent_id="nolab", lab="", state="unknown", vitals={}),
                ]
            )
        sent = statements(db)
        batch = [
            make_result(agent_id=a, lab=lab) for a, lab in [("old", "Lab B"), ("nolab", ""), ("new", "Lab N")]
        ]
        batch += [make_result(agent_id=a, lab="Lab Z") for a in ("old", "nolab", "new") for _ in range(10)]
        before = datetime.now(timezone.utc)
        outcome = IngestWriter(db).write(batch)
        assert outcome.stored == len(batch) and len(outcome.lags) == len(batch)
        inserts = [q for q in sent if q.lstrip().upper().startswith("INSERT INTO CLASSIFICATIONS")]
        agent_updates = [q for q in sent if q.lstrip().upper().startswith("UPDATE AGENTS SET LAST_SEEN")]
        assert len(inserts) == 1 and len(agent_updates) == 1, sent  # one statement per batch, not per message
        with db.session() as s:
            agents = {a.agent_id: a for a in s.scalars(select(Agent))}
        assert {a: agents[a].lab for a in agents} == {"old": "Lab A", "nolab": "Lab Z", "new": "Lab N"}
        assert all(a.last_seen is not None and a.last_seen >= before for a in agents.values())
        assert agents["new"].state == "unknown"  # registered on first sight (auto_register, the default)
        seen = agents["old"].last_seen
        IngestWriter(db).write([make_result(agent_id="old")])
        with db.session() as s:
            later = s.scalar(select(Agent.last_seen).where(Agent.agent_id == "old"))
        assert later is not None and seen is not None and later > seen
    finally:
        db.dispose()


def test_stored_rows_are_the_results_as_sent(tmp_path):
    cfg = hub_config(tmp_path, None)
    db = Database(cfg.db_url)
    upgrade(db)
    try:
        assert_round_trip(db)
    finally:
        db.dispose()


def assert_round_trip(db: Database) -> None:
    """Results with awkward text, offsets and schema versions come back from ``db`` field for field
    (also run on PostgreSQL by tests/integration/test_hub_ingest.py)."""
    plus2 = timezone(timedelta(hours=2))
    sent = [
        make_result(image_name='a "quoted"\ttab\\back\nnewline ünï €.png', lab="Läb ✓", device=""),
        make_result(captured_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=plus2), low_confidence=True),
        make_result(schema_version=1, confidence=1e-300, label="ALL"),
        make_result(precision="BF16", execution_precision="bf16", confidence=0.1234567890123),
    ]
    outcome = IngestWriter(db).write(sent)
    assert outcome.stored == len(sent)
    oldest = (datetime.now(timezone.utc) - min(r.captured_at for r in sent)).total_seconds()
    assert len(outcome.lags) == len(sent) and all(0 <= lag <= oldest for lag in outcome.lags)
    with db.session() as s:
        rows = {row.result_id: row for row in s.scalars(select(Classification))}
    for r in sent:
        row = rows[r.result_id]
        for name in (
            "agent_id",
            "lab",
            "image_name",
            "image_sha256",
            "label",
            "confidence",
            "low_confidence",
        ):
            assert getattr(row, name) == getattr(r, name), name
        for name in ("model_name", "model_version", "device", "precision", "execution_precision"):
            assert getattr(row, name) == getattr(r, name), name
        assert row.probabilities == r.probabilities and row.timings == r.timings.model_dump()
        assert row.captured_at == r.captured_at and row.captured_at.tzinfo is not None
        assert row.received_at >= row.captured_at


def test_concurrent_writers_store_each_result_once_on_sqlite(tmp_path):
    cfg = hub_config(tmp_path, None)
    first, second = Database(cfg.db_url), Database(cfg.db_url)
    upgrade(first)
    try:
        assert_concurrent_dedupe(first, second)
    finally:
        first.dispose()
        second.dispose()


def assert_concurrent_dedupe(first: Database, second: Database, rounds: int = 20) -> None:
    """Two writers on two connections write the same batches at once: each result is stored once and
    every message is counted as stored or duplicate exactly once."""
    batches = [[make_result(agent_id=f"c{i % 3}") for i in range(30)] for _ in range(rounds)]
    outcomes: list[BatchOutcome] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def write(db: Database) -> None:
        writer = IngestWriter(db)
        try:
            start.wait(10)
            for batch in batches:
                outcomes.append(writer.write(batch))
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(db,)) for db in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    sent = {r.result_id for batch in batches for r in batch}
    assert sum(o.stored for o in outcomes) == len(sent)
    assert sum(o.duplicates for o in outcomes) == len(sent)
    assert sum(len(o.lags) for o in outcomes) == len(sent)
    mine = Classification.agent_id.in_(["c0", "c1", "c2"])
    with first.session() as s:
        assert set(s.scalars(select(Classification.result_id).where(mine))) == sent
        assert s.scalar(select(func.count()).select_from(Classification).where(mine)) == len(sent)


def incoming(n: int, at: float | None = None) -> list[Incoming]:
    at = time.monotonic() if at is None else at
    topic = topics.parse(topics.build("scope-1", topics.Kind.RESULTS))
    return [
        Incoming(topic, "t", make_result().to_json(), mid=i, qos=1, generation=1, at=at) for i in range(n)
    ]


def produce(batches: Batches, items: list[Incoming]) -> threading.Thread:
    """Put ``items`` from a thread of their own, as paho's network thread does."""
    thread = threading.Thread(target=lambda: [batches.put(i) for i in items], daemon=True)
    thread.start()
    return thread


def test_a_full_batch_goes_at_once_and_a_trickle_waits_for_batch_ms():
    stop = threading.Event()
    batches = Batches(size=50, wait_s=0.3)
    producer = produce(batches, incoming(120))
    t0 = time.monotonic()
    assert [len(batches.take(stop)) for _ in range(3)] == [50, 50, 20]
    assert time.monotonic() - t0 < 0.25  # full batches, then a pause at 20 (MIN_WINDOW): no batch_ms
    producer.join(5)
    assert batches.take(stop, poll_s=0.05) == []
    produce(batches, incoming(3))
    t0 = time.monotonic()
    assert len(batches.take(stop)) == 3
    assert time.monotonic() - t0 >= 0.25  # below MIN_WINDOW a pause is a trickle: wait for batch_ms


def test_a_batch_that_fills_the_brokers_window_goes_when_the_flow_pauses():
    stop = threading.Event()
    batches = Batches(size=500, wait_s=5.0)
    produce(batches, incoming(MIN_WINDOW))
    t0 = time.monotonic()
    assert len(batches.take(stop)) == MIN_WINDOW
    assert time.monotonic() - t0 < 1.0  # not batch_ms: the broker waits for our acknowledgements
    # the writer started waiting below the window (a trickle so far); the flow then reaches it
    items = incoming(MIN_WINDOW)
    produce(batches, items[:1])
    threading.Timer(0.1, lambda: produce(batches, items[1:])).start()
    t0 = time.monotonic()
    assert len(batches.take(stop)) == MIN_WINDOW
    assert time.monotonic() - t0 < 1.0
    stop.set()
    produce(batches, incoming(3))
    t0 = time.monotonic()
    assert len(batches.take(stop)) == 3 and time.monotonic() - t0 < 1.0  # stopping: no waiting


def test_the_queue_holds_one_batch_then_paho_waits_for_the_writer():
    stop = threading.Event()
    batches = Batches(size=10, wait_s=0.05)
    producer = produce(batches, incoming(25))
    time.sleep(0.2)
    assert producer.is_alive()  # waiting for room: 10 queued, the 11th put has not returned
    assert [len(batches.take(stop)) for _ in range(3)] == [10, 10, 5]
    producer.join(5)
    assert not producer.is_alive()
    stuck = produce(batches, incoming(12))
    time.sleep(0.2)
    assert stuck.is_alive()
    batches.close()  # the writer is going away: paho's thread must not wait for it
    stuck.join(5)
    assert not stuck.is_alive()


def test_stats_observe_batches_commits_and_lags():
    stats = IngestStats()
    stats.observe_batch(0.02, 0.01, [0.2, 3.0, -1.0])  # an agent clock ahead of the hub: lag 0
    samples = {
        s.name + str(s.labels.get("le", "")): s.value
        for h in (stats.batch_seconds, stats.commit_seconds, stats.lag_seconds)
        for metric in h.collect()
        for s in metric.samples
    }
    assert samples["leukonet_ingest_batch_seconds_count"] == 1
    assert samples["leukonet_ingest_commit_seconds_count"] == 1
    assert samples["leukonet_ingest_lag_seconds_count"] == 3
    assert samples["leukonet_ingest_lag_seconds_bucket0.1"] == 1  # the clamped one
    assert samples["leukonet_ingest_lag_seconds_sum"] == pytest.approx(3.2)


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
