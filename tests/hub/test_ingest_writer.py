"""The set-based writer on SQLite (tests/integration/test_hub_ingest.py runs the same checks on
PostgreSQL): one INSERT per batch, one UPDATE of the agents per batch, rows equal to the results as
sent, and each result stored once with two writers at once."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import event, func, select

from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification
from hub.db.session import Database
from hub.ingest import BatchOutcome
from hub.ingest.writer import IngestWriter
from tests.hub.conftest import hub_config, make_result


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
