"""The review queue: urgency order, views, keyset pages and "next in the queue" (SQLite), and on
PostgreSQL the ingest statement and the queue's plan (index range reads, no sort over the table)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from hub.db.migrate import upgrade
from hub.db.review_models import ReviewStatus
from hub.db.session import Database
from hub.review.queue import QueueCursor, QueueKey, next_in_queue, queue_keys, queue_page
from hub.review.service import find_result, status_of
from hub.review.statuses import add_review_statuses, backfill
from shared.schemas import ClassificationResult
from tests.hub.conftest import make_result
from tests.hub.review_fixtures import (
    ALICE,
    BOB,
    DEFAULT,
    T0,
    TWO,
    act,
    kinds,
    queue_ids,
    signs,
    status,
    store,
)
from tests.integration.test_results_queries import explain, summary


@pytest.fixture
def stored(db: Database) -> dict[str, ClassificationResult]:
    results = kinds()
    store(db, list(results.values()))
    return results


# --- the queue ------------------------------------------------------------------------------------


def test_the_queue_is_most_urgent_first_then_oldest_first(db):
    today, yesterday = kinds(T0), kinds(T0 - timedelta(days=1))
    store(db, [*today.values(), *yesterday.values()])
    expected = [
        d[k].result_id for k in ("flagged", "positive", "low", "negative") for d in (yesterday, today)
    ]
    assert queue_ids(db, "open") == expected
    assert queue_ids(db, "unreviewed") == expected
    # states move results between the views; final ones leave the open queue
    act(db, today["positive"].result_id, action="confirm")
    signs(db, yesterday["negative"].result_id)
    act(db, yesterday["positive"].result_id, ALICE, TWO, action="confirm")
    signs(db, yesterday["positive"].result_id, ALICE, TWO)
    assert queue_ids(db, "reviewed") == [today["positive"].result_id]
    assert queue_ids(db, "needs_second") == [yesterday["positive"].result_id]
    assert queue_ids(db, "final") == [yesterday["negative"].result_id]
    open_now = [i for i in expected if i != yesterday["negative"].result_id]
    assert queue_ids(db, "open") == open_now


def test_queue_pages_by_cursor_hold_every_row_once(db):
    results = [
        make_result(label=lab, captured_at=T0 + timedelta(seconds=i // 3), low_confidence=i % 5 == 0)
        for i, lab in enumerate(["ALL", "normal", "normal"] * 12)
    ]
    store(db, results)
    act(db, results[0].result_id, action="confirm")
    full = queue_ids(db, "open")
    assert len(full) == len(results)
    seen: list[uuid.UUID] = []
    after = None
    with db.session() as s:
        while True:
            rows, after = queue_page(s, "open", 5, after)
            seen += [row.result_id for _, row in rows]
            if after is None:
                break
            token = QueueCursor(after, "open").encode()
            assert QueueCursor.decode(token, "open").key == after
    assert seen == full
    for bad in (
        "x",
        token + "A",
        QueueCursor(QueueCursor.decode(token, "open").key, "final").encode(),
    ):
        with pytest.raises(ValueError, match="not a cursor of this queue view"):
            QueueCursor.decode(bad, "open")


def test_next_in_queue_follows_the_order_and_wraps_to_the_top(db, stored):
    order = queue_ids(db, "open")
    with db.session() as s:
        statuses = [status_of(s, find_result(s, rid), DEFAULT) for rid in order]
        following = [next_in_queue(s, st) for st in statuses]
    assert [f.result_id if f else None for f in following] == [*order[1:], order[0]]


# --- PostgreSQL: the ingest statement and the queue plan ----------------------------------------


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    db = Database(postgres_url)
    upgrade(db)
    yield db
    db.dispose()


@pytest.mark.integration
def test_statuses_and_reviews_on_postgresql(pg):
    results = list(kinds().values())
    store(pg, results)
    with pg.transaction() as s:
        assert add_review_statuses(s, [r.result_id for r in results], DEFAULT) == 0
    assert [status(pg, r.result_id).priority for r in results] == [3, 1, 2, 0]
    rid = results[1].result_id
    act(pg, rid, action="reclassify", label="unsure")
    act(pg, rid, BOB, action="reclassify", label="ALL")
    assert signs(pg, rid, BOB, TWO).state == "needs_second"
    assert signs(pg, rid, ALICE, TWO).state == "final"
    assert queue_ids(pg, "final") == [rid]


@pytest.mark.integration
def test_the_queue_is_index_range_reads_on_postgresql(pg):
    with pg.engine.begin() as conn:
        conn.execute(
            text(
                """
INSERT INTO classifications (result_id, agent_id, lab, image_name, image_sha256, label, confidence,
    probabilities, low_confidence, model_name, model_version, device, timings, captured_at, received_at,
    unfamiliar)
SELECT gen_random_uuid(), 'scope-' || (i % 20), 'Lab A', 'img-' || i || '.png', md5(i::text),
    CASE WHEN i % 10 = 0 THEN 'ALL' ELSE 'normal' END, 0.9, '{"ALL": 0.1, "normal": 0.9}'::json,
    i % 7 = 0, 'leuko', '1.0.0', 'CPU', '{"total_ms": 8.0}'::json,
    :t0 + i * interval '1 s', :t0 + i * interval '1 s', i % 100 = 0
FROM generate_series(1, 50000) AS i
"""
            ),
            {"t0": T0},
        )
    with pg.transaction() as s:
        assert backfill(s, DEFAULT) == 50_000
        s.execute(text("UPDATE review_status SET state = 'final' WHERE result_id % 4 <> 0"))
    with pg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE review_status"))
    with pg.session() as s:
        middle = s.scalars(
            select(ReviewStatus)
            .where(ReviewStatus.state == "unreviewed")
            .order_by(ReviewStatus.priority, ReviewStatus.captured_at, ReviewStatus.result_id)
            .offset(6000)
            .limit(1)
        ).one()
        deep = QueueKey.of(middle)
    print()
    for view in ("open", "unreviewed", "final"):
        for after in (None, deep):
            plan, ms = explain(pg, queue_keys(view, 51, after))
            print(f"queue {view:<10} {'deep' if after else 'first':<5} {ms:7.2f} ms  {summary(plan)}")
            used = {n.get("Index Name") for n in plan if n["Node Type"] in ("Index Scan", "Index Only Scan")}
            assert used == {"ix_review_status_queue"}, (view, after, summary(plan))
            assert not [n for n in plan if n["Node Type"] == "Seq Scan"], summary(plan)
            sorted_rows = sum(
                c["Actual Rows"] * c["Actual Loops"]
                for n in plan
                if "Sort" in n["Node Type"]
                for c in n.get("Plans", [])
            )
            assert sorted_rows <= 3 * 51, (view, summary(plan))  # at most a page per state is merged
