"""Cell-level results (schema_version 3) on the fast ingest path, on SQLite and PostgreSQL: v1, v2 and
v3 results in one batch, a field's cells stored with one set-based statement per batch in the
result's transaction, exact dedupe on redelivery (never a duplicated cell), a cell PostgreSQL refuses
costing only its result, migration 0007 up and down, and the partial indexes serving their filters.
Hostile payloads: tests/hub/test_cells_ingest_hostile.py.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import Any

import pytest
from alembic import command
from sqlalchemy import MetaData, Table, event, func, inspect, select

from hub.db.migrate import alembic_config, upgrade
from hub.db.models import Classification, ResultCell
from hub.db.session import Database
from hub.ingest import IngestStats
from hub.ingest.committer import Committer
from hub.ingest.writer import BatchOutcome, IngestWriter
from shared.cells.spec import InputKind
from shared.schemas import CellResult, ClassificationResult
from tests.hub.cells_results import count, incoming, make_cell, make_field_result, sqlite_db
from tests.hub.conftest import hub_config, make_result


def statements(db: Database) -> list[str]:
    sent: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda conn, cur, sql, *a: sent.append(sql))
    return sent


def stored_cells(db: Database, result_id: uuid.UUID) -> list[ResultCell]:
    with db.session() as s:
        row_id = s.scalar(select(Classification.id).where(Classification.result_id == result_id))
        return list(
            s.scalars(
                select(ResultCell)
                .where(ResultCell.classification_id == row_id)
                .order_by(ResultCell.cell_index)
            )
        )


# --- the checks, run on SQLite here and on PostgreSQL below ----------------------------------------


def check_mixed_versions_round_trip(db: Database) -> None:
    """v1, v2 and v3 (single cell, field, empty field, full field) in one batch: one statement writes
    the cells, and every column and cell comes back as sent."""
    full = [make_cell(10 * i, 7 * i, (i % 10) / 10, side=40 + i % 9) for i in range(256)]
    sent = [
        make_result(schema_version=1),
        make_result(schema_version=2, precision="FP16", execution_precision="f16"),
        make_result(input_kind=InputKind.CELL, unfamiliar=True, ood_score=17.25, label="normal"),
        make_field_result(),
        make_field_result(cells=[], specimen_id=None, unfamiliar=True, ood_score=None),
        make_field_result(cells=full, decision_rule='läb rule ✓ "quoted"', specimen_id="S/1 ü"),
    ]
    sent_sql = statements(db)
    outcome = IngestWriter(db).write(sent)
    assert (outcome.stored, outcome.duplicates) == (len(sent), 0)
    touching_cells = [q for q in sent_sql if "result_cells" in q.lower()]
    assert len(touching_cells) == 1, touching_cells  # one set-based statement, not one per cell
    with db.session() as s:
        rows = {r.result_id: r for r in s.scalars(select(Classification))}
    for r in sent:
        row = rows[r.result_id]
        assert row.input_kind == (r.input_kind.value if r.input_kind else None)
        assert (row.unfamiliar, row.ood_score, row.specimen_id) == (r.unfamiliar, r.ood_score, r.specimen_id)
        assert (row.decision_rule, row.cell_counts) == (r.decision_rule, r.cell_counts)
        assert (row.label, row.confidence, row.probabilities) == (r.label, r.confidence, r.probabilities)
        cells = stored_cells(db, r.result_id)
        assert len(cells) == len(r.cells or [])
        for i, (got, want) in enumerate(zip(cells, r.cells or [], strict=True)):
            assert got.cell_index == i
            assert (got.x, got.y, got.width, got.height) == want.box
            assert (got.label, got.confidence, got.probabilities) == (
                want.label,
                want.confidence,
                want.probabilities,
            )
            assert (got.unfamiliar, got.ood_score) == (want.unfamiliar, want.ood_score)
    assert sum(len(stored_cells(db, r.result_id)) for r in sent) == 3 + 256


def check_redelivery_never_duplicates_cells(db: Database) -> None:
    """A field redelivered in the same batch, in a later batch, or beside new fields: its result and
    its cells are stored once, and the counts say stored / duplicate exactly."""
    w = IngestWriter(db)
    before = count(db, ResultCell)
    a, b = make_field_result(agent_id="r1"), make_field_result(agent_id="r1", cells=[make_cell(5, 5, 0.7)])
    first = w.write([a, a, b])
    assert (first.stored, first.duplicates) == (2, 1)
    assert count(db, ResultCell) == before + 4
    again = w.write([a, b])
    assert (again.stored, again.duplicates) == (0, 2)
    c = make_field_result(agent_id="r1")
    mixed = w.write([b, c, a])
    assert (mixed.stored, mixed.duplicates) == (1, 2)
    assert count(db, ResultCell) == before + 7
    assert [x.cell_index for x in stored_cells(db, a.result_id)] == [0, 1, 2]


def check_concurrent_writers_with_cells(first: Database, second: Database, rounds: int = 8) -> None:
    """Two writers store the same field batches at once: each result and each of its cells once."""
    batches = [[make_field_result(agent_id=f"c{i % 3}") for i in range(20)] for _ in range(rounds)]
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
        t.join(120)
    assert not errors, errors
    sent = [r for batch in batches for r in batch]
    assert sum(o.stored for o in outcomes) == len(sent) == sum(o.duplicates for o in outcomes)
    mine = Classification.agent_id.in_(["c0", "c1", "c2"])
    with first.session() as s:
        assert s.scalar(select(func.count()).select_from(Classification).where(mine)) == len(sent)
        cells = select(func.count()).select_from(ResultCell).join(Classification).where(mine)
        assert s.scalar(cells) == sum(len(r.cells or []) for r in sent)


def check_retention_delete_takes_the_cells(db: Database) -> None:
    """Deleting a result (what retention does) deletes its cells (ON DELETE CASCADE)."""
    r = make_field_result(agent_id="gone")
    IngestWriter(db).write([r])
    before = count(db, ResultCell)
    with db.transaction() as s:
        s.execute(Classification.__table__.delete().where(Classification.result_id == r.result_id))
    assert count(db, ResultCell) == before - len(r.cells or [])


def test_mixed_versions_round_trip_on_sqlite(tmp_path):
    db = sqlite_db(tmp_path)
    try:
        check_mixed_versions_round_trip(db)
        check_redelivery_never_duplicates_cells(db)
        check_retention_delete_takes_the_cells(db)
    finally:
        db.dispose()


def test_concurrent_writers_store_each_cell_once_on_sqlite(tmp_path):
    url = hub_config(tmp_path, None).db_url
    first, second = Database(url), Database(url)
    upgrade(first)
    try:
        check_concurrent_writers_with_cells(first, second)
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.integration
def test_cells_ingest_on_postgresql(postgres_url):
    first, second = Database(postgres_url), Database(postgres_url)
    upgrade(first)
    try:
        check_mixed_versions_round_trip(first)
        check_redelivery_never_duplicates_cells(first)
        check_retention_delete_takes_the_cells(first)
        check_concurrent_writers_with_cells(first, second)
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.integration
def test_a_cell_postgresql_refuses_costs_only_its_result(tmp_path, postgres_url):
    """A cell label with NUL is valid JSON that PostgreSQL refuses: the batch is retried one result per
    transaction, that result alone is counted (db_rejected) and the others are stored with their cells."""
    db = Database(postgres_url)
    upgrade(db)
    try:
        stats = IngestStats()
        acked: list[int] = []
        committer = Committer(
            IngestWriter(db), stats, lambda items: acked.extend(i.mid for i in items), None, threading.Event()
        )
        good = [make_field_result(agent_id="pg1") for _ in range(3)]
        # valid for the schema (the cell's label is one of its probabilities' keys; no registry here)
        nul = CellResult(box=(1, 1, 9, 9), label="A\x00LL", confidence=0.9, probabilities={"A\x00LL": 0.9})
        bad = make_field_result(agent_id="pg1", cells=[make_cell(2, 2, 0.2), nul])
        batch = [incoming("pg1", m.to_json(), mid) for mid, m in enumerate([*good, bad, *good[:1]])]
        items, messages = committer.validate(batch)
        committer.flush(items, messages)
        assert sorted(acked) == list(range(5))
        assert stats.invalid == Counter({"db_rejected": 1})
        assert (stats.stored, stats.duplicates) == (3, 1)
        assert count(db, ResultCell) == 9
    finally:
        db.dispose()


# --- migration 0007 ---------------------------------------------------------------------------


def check_0007_up_and_down(db: Database) -> None:
    upgrade(db, "0006")
    before = Table("classifications", MetaData(), autoload_with=db.engine)  # as 0006 left it
    old = make_result(agent_id="old", schema_version=2)
    with db.engine.begin() as conn:
        conn.execute(
            before.insert(),
            {c.name: _column_value(old, c.name) for c in before.columns if c.name != "id"},
        )
    upgrade(db)
    insp = inspect(db.engine)
    assert "result_cells" in insp.get_table_names()
    columns = {c["name"] for c in insp.get_columns("classifications")}
    assert {"input_kind", "unfamiliar", "ood_score", "specimen_id", "decision_rule", "cell_counts"} <= columns
    names = {i["name"] for i in insp.get_indexes("classifications")}
    assert {"ix_classifications_unfamiliar_captured_id", "ix_classifications_specimen_captured_id"} <= names
    with db.session() as s:
        old = s.scalar(select(Classification).where(Classification.agent_id == "old"))
        assert old is not None and old.unfamiliar is False and old.input_kind is None  # the server default
    IngestWriter(db).write([make_field_result(agent_id="new")])
    cfg = alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0006")
    insp = inspect(db.engine)
    assert "result_cells" not in insp.get_table_names()
    assert "unfamiliar" not in {c["name"] for c in insp.get_columns("classifications")}
    assert count(db, Classification) == 2  # the rows stay, without their v3 columns
    upgrade(db)
    assert count(db, ResultCell) == 0


def _column_value(r: ClassificationResult, name: str) -> Any:
    if name == "received_at":
        return r.captured_at
    if name == "result_id":
        return r.result_id.hex
    value = getattr(r, name)
    return value.model_dump() if name == "timings" else value


def test_0007_upgrades_and_downgrades_on_sqlite(tmp_path):
    db = Database(hub_config(tmp_path, None).db_url)
    try:
        check_0007_up_and_down(db)
    finally:
        db.dispose()


@pytest.mark.integration
def test_0007_upgrades_and_downgrades_on_postgresql(postgres_url):
    db = Database(postgres_url)
    try:
        check_0007_up_and_down(db)
    finally:
        db.dispose()


# --- the indexes 0007 adds serve their filters ------------------------------------------------

PLAN_ROWS = 40_000
# one result in 100 unfamiliar, one in 8 with a specimen (20 results per specimen)
PLAN_LOAD = """
INSERT INTO classifications (result_id, agent_id, lab, image_name, image_sha256, label, confidence,
    probabilities, low_confidence, model_name, model_version, device, timings, captured_at, received_at,
    input_kind, unfamiliar, ood_score, specimen_id)
SELECT gen_random_uuid(), 'scope-' || (i % 20), 'Lab', 'img-' || i || '.png', md5(i::text) || md5(i::text),
    'normal', 0.9, '{"ALL": 0.1, "normal": 0.9}'::json, false, 'leuko', '1.0.0', 'CPU', '{}'::json,
    :t0 + i * interval '10 s', :t0 + i * interval '10 s', 'field', i % 100 = 0, (i % 100)::float,
    CASE WHEN i % 8 = 0 THEN 'S-' || (i / 160) END
FROM generate_series(1, :n) AS i
"""


@pytest.mark.integration
def test_the_unfamiliar_and_specimen_filters_read_their_partial_indexes(postgres_url):
    from datetime import datetime, timezone

    from sqlalchemy import text

    from hub.api.classifications import ResultFilters, page_query

    db = Database(postgres_url)
    upgrade(db)
    try:
        with db.engine.begin() as conn:
            conn.execute(text(PLAN_LOAD), {"n": PLAN_ROWS, "t0": datetime(2026, 1, 1, tzinfo=timezone.utc)})
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE classifications"))
        # unfamiliar: its partial index (the explorer's "flagged" partial index also holds every
        # unfamiliar result, so the planner may AND the two as bitmaps and sort the few hundred rows);
        # one specimen: its few rows from the partial index (a bitmap, maybe sorted)
        cases = {
            "ix_classifications_unfamiliar_captured_id": (ResultFilters(unfamiliar=True), False),
            "ix_classifications_specimen_captured_id": (ResultFilters(specimen_id="S-7"), False),
        }
        for index, (filters, ordered) in cases.items():
            stmt = page_query(filters, limit=51).compile(db.engine, compile_kwargs={"literal_binds": True})
            with db.engine.connect() as conn:
                plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {stmt}")))
            assert index in plan and "Seq Scan" not in plan, plan
            assert not ordered or "Sort" not in plan, plan
            with db.session() as s:
                rows = s.scalars(page_query(filters, limit=500)).all()
            assert rows and all(filters.unfamiliar is None or r.unfamiliar for r in rows)
            assert [r.captured_at for r in rows] == sorted((r.captured_at for r in rows), reverse=True)
        with db.session() as s:
            assert (
                len(s.scalars(page_query(ResultFilters(unfamiliar=True), limit=1000)).all())
                == PLAN_ROWS // 100
            )
    finally:
        db.dispose()


def test_the_partial_indexes_serve_their_filters_on_sqlite(tmp_path):
    from sqlalchemy import text

    from hub.api.classifications import ResultFilters, page_query

    db = sqlite_db(tmp_path)
    try:
        # unfamiliar results are in two partial indexes, both in page order: its own and the
        # explorer's "flagged" one (unfamiliar or low confidence); either serves without a sort
        cases = {
            ("ix_classifications_unfamiliar_captured_id", "ix_classifications_flagged_captured_id"): (
                ResultFilters(unfamiliar=True)
            ),
            ("ix_classifications_specimen_captured_id",): ResultFilters(specimen_id="S-7"),
            ("ix_classifications_captured_id",): ResultFilters(unfamiliar=False),  # most: the time index
        }
        for indexes, filters in cases.items():
            stmt = page_query(filters, limit=51).compile(db.engine, compile_kwargs={"literal_binds": True})
            with db.engine.connect() as conn:
                plan = " ".join(str(r[-1]) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt}")))
            assert any(f"USING INDEX {i}" in plan for i in indexes) and "TEMP B-TREE" not in plan, plan
    finally:
        db.dispose()
