"""Benchmark: the review queue and the results page with 1,000,000 results in PostgreSQL.

One fresh PostgreSQL database (dropped afterwards) is migrated and loaded with
``LEUKONET_BENCH_REVIEW_ROWS`` results (default 1,000,000) by ``INSERT ... SELECT FROM
generate_series``: 50 agents, spread evenly over 90 days of capture time, labels AML 5 %,
ALL 30 %, normal 65 %, 10 % low confidence, 1 % unfamiliar. Their review statuses are made by
:func:`hub.review.statuses.backfill` (the statement the migration and ingest use) and then given a
lab's spread of states: everything captured more than 10 days before the newest result is final;
the last 10 days are 80 % unreviewed, 15 % reviewed, 5 % waiting for a second signature. Then
``VACUUM ANALYZE``, as autovacuum would.

Requests go through the Flask app's test client, signed in as a reviewer (a dashboard session, as
the browser's fetch() calls are), at least 200 of each:

* ``review_queue``: ``GET /api/v1/review/queue`` first pages of every view, pages that follow
  ``next_cursor``, and deep pages (cursors at rows spread over the whole queue);
* ``results_page``: ``GET /api/v1/classifications`` filtered by agent + label + a date range,
  first pages (with the total) and pages by cursor, and by label + range, and range alone.

It also times the ingest cost of review: per 1,000-result batch, the results' insert and the one
INSERT ... SELECT that gives them their statuses (in one transaction, as the ingest hook will).
Printed (``make bench``)::

    BENCH review_queue_p95_ms <p95 over the queue requests> ms
    BENCH results_page_p95_ms <p95 over the results requests> ms
    BENCH review_queue_page_p95_ms <p95 of the /review HTML page> ms
    BENCH review_status_backfill_s <seconds to make every status> s
    BENCH review_status_ingest_us_per_row <status insert per stored result> us
    BENCH hub_ingest_insert_us_per_row <the results' own insert, for scale> us

and the EXPLAIN (ANALYZE) plan of each query shape. It measures; it fails only when a request
does not answer 200 or a plan reads the table sequentially. The issue's goal: p95 < 150 ms.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text

from hub.api.classifications import ResultFilters, page_query
from hub.app import close_app
from hub.db.migrate import upgrade
from hub.db.review_models import ReviewStatus
from hub.db.session import Database
from hub.ingest.results import insert_results
from hub.review.policy import ReviewSettings
from hub.review.queue import QueueCursor, QueueKey, queue_keys
from hub.review.statuses import add_review_statuses, backfill
from tests.hub.conftest import hub_config, login_as, make_result
from tests.hub.review_fixtures import review_app
from tests.integration.test_results_queries import explain, summary

pytestmark = pytest.mark.bench

ROWS = int(os.environ.get("LEUKONET_BENCH_REVIEW_ROWS", "1000000"))
REQUESTS = int(os.environ.get("LEUKONET_BENCH_REVIEW_REQUESTS", "250"))
INGEST_BATCHES = 20
BATCH = 1000
AGENTS = 50
T_END = datetime(2026, 6, 1, tzinfo=timezone.utc)
OPEN_DAYS = 10
DAYS = 90
LOAD = """
INSERT INTO classifications (result_id, agent_id, lab, image_name, image_sha256, label, confidence,
    probabilities, low_confidence, model_name, model_version, device, precision, execution_precision,
    timings, captured_at, received_at, unfamiliar)
SELECT gen_random_uuid(), 'scope-' || (abs(hashtext('a' || i)) % :agents), 'Lab ' || (i % 7),
    'img-' || i || '.png', md5(i::text) || md5((i + 1)::text),
    CASE WHEN abs(hashtext('l' || i)) % 100 < 5 THEN 'AML'
         WHEN abs(hashtext('l' || i)) % 100 < 35 THEN 'ALL' ELSE 'normal' END,
    0.5 + (i % 50) / 100.0, '{"ALL": 0.3, "AML": 0.1, "normal": 0.6}'::json, i % 10 = 0,
    'leuko', '1.0.0', 'CPU', 'FP32', 'FP32', '{"total_ms": 8.0}'::json,
    :t_end - (:n - i) * CAST(:step_ms AS BIGINT) * interval '1 ms',
    :t_end - (:n - i) * CAST(:step_ms AS BIGINT) * interval '1 ms' + interval '2 s',
    abs(hashtext('u' || i)) % 100 = 0
FROM generate_series(1, :n) AS i
"""
STATES = """
UPDATE review_status SET
    state = CASE WHEN captured_at < :open_from THEN 'final'
                 WHEN result_id % 20 = 0 THEN 'needs_second'
                 WHEN result_id % 20 < 4 THEN 'reviewed' ELSE 'unreviewed' END,
    signed_by = CASE WHEN captured_at < :open_from OR result_id % 20 = 0 THEN 'rita' END
"""


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def timed(client: FlaskClient, url: str, query: dict[str, Any] | None = None) -> tuple[float, Any]:
    start = time.perf_counter()
    r = client.get(url, query_string=query or {})
    ms = (time.perf_counter() - start) * 1000
    assert r.status_code == 200, (url, query, r.get_data(as_text=True)[:300])
    return ms, r


def show_plan(db: Database, what: str, stmt: Any) -> None:
    plan, ms = explain(db, stmt)
    print(f"PLAN {what:<44} {ms:8.2f} ms  {summary(plan)}")
    assert not [n for n in plan if n["Node Type"] == "Seq Scan"], f"{what}: {summary(plan)}"


def load(db: Database) -> None:
    """The results, their statuses and states, then statistics (see the module docstring)."""
    upgrade(db)
    start = time.perf_counter()
    with db.engine.begin() as conn:
        step_ms = DAYS * 86_400_000 // ROWS  # the rows spread evenly over DAYS
        conn.execute(text(LOAD), {"n": ROWS, "t_end": T_END, "agents": AGENTS, "step_ms": step_ms})
    print(f"\nloaded {ROWS:,} results in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    with db.transaction() as s:
        made = backfill(s, ReviewSettings())
    backfill_s = time.perf_counter() - start
    assert made == ROWS
    print(f"BENCH review_status_backfill_s {backfill_s:.2f} s")
    with db.engine.begin() as conn:
        conn.execute(text(STATES), {"open_from": T_END - timedelta(days=OPEN_DAYS)})
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE classifications"))
        conn.execute(text("VACUUM ANALYZE review_status"))
        counts = dict(conn.execute(text("SELECT state, count(*) FROM review_status GROUP BY state")).all())
    print(f"review states: {counts}")


@pytest.fixture
def loaded(tmp_path: Any, postgres_url: str) -> Iterator[tuple[Flask, Database]]:
    db = Database(postgres_url)
    try:
        load(db)
        app = review_app(hub_config(tmp_path, None, database_url=postgres_url))
        try:
            yield app, db
        finally:
            close_app(app)
    finally:
        db.dispose()


def queue_cursors(db: Database, view: str, states: tuple[str, ...], n: int, rng: random.Random) -> list[str]:
    """``n`` cursors of ``view`` at rows spread over its whole range."""
    with db.session() as s:
        rows = list(
            s.scalars(
                select(ReviewStatus).where(ReviewStatus.state.in_(states), ReviewStatus.result_id % 97 == 0)
            )
        )
    return [QueueCursor(QueueKey.of(st), view).encode() for st in rng.sample(rows, min(n, len(rows)))]


def measure(label: str, requests: list[Callable[[], float]]) -> float:
    samples = [run() for run in requests]
    value = p95(samples)
    print(
        f"{label}: {len(samples)} requests, median {sorted(samples)[len(samples) // 2]:.1f} ms, "
        f"p95 {value:.1f} ms, max {max(samples):.1f} ms"
    )
    return value


def test_review_queue_and_results_page_at_a_million_results(loaded):
    app, db = loaded
    client = app.test_client()
    login_as(app, client, "reviewer")
    rng = random.Random(14)
    views = {
        "open": ("unreviewed", "needs_second", "reviewed"),
        "unreviewed": ("unreviewed",),
        "reviewed": ("reviewed",),
        "needs_second": ("needs_second",),
        "final": ("final",),
    }
    # --- the plans -------------------------------------------------------------------------------
    deep = QueueCursor.decode(queue_cursors(db, "open", views["open"], 1, rng)[0], "open").key
    for view in views:
        show_plan(db, f"queue {view} first page", queue_keys(view, 51))
        show_plan(db, f"queue {view} deep page", queue_keys(view, 51, deep))
    since, until = T_END - timedelta(days=30), T_END - timedelta(days=20)
    for what, filters in {
        "results agent+label+range": ResultFilters("scope-7", "ALL", since, until),
        "results label+range": ResultFilters(None, "AML", since, until),
        "results range": ResultFilters(None, None, since, until),
    }.items():
        show_plan(db, what, page_query(filters, limit=51))

    # --- the review queue ------------------------------------------------------------------------
    queue: list[Callable[[], float]] = []
    per_view = math.ceil(REQUESTS / (3 * len(views)))
    for view, states in views.items():
        queue += [lambda v=view: timed(client, "/api/v1/review/queue", {"view": v})[0]] * per_view
        for cursor in queue_cursors(db, view, states, per_view, rng):
            queue.append(
                lambda v=view, c=cursor: timed(client, "/api/v1/review/queue", {"view": v, "cursor": c})[0]
            )

    def follow(view: str, pages: int) -> float:
        """One request of a reviewer paging on: the time of the last page of a chain."""
        cursor, ms = None, 0.0
        for _ in range(pages):
            query = {"view": view} | ({"cursor": cursor} if cursor else {})
            ms, r = timed(client, "/api/v1/review/queue", query)
            cursor = r.json["next_cursor"]
            if cursor is None:
                break
        return ms

    queue += [lambda v=view: follow(v, 3) for view in views] * per_view
    rng.shuffle(queue)
    queue_p95 = measure("review queue (API)", queue)

    html = [lambda v=view: timed(client, "/review", {"view": v})[0] for view in views] * (REQUESTS // 10)
    page_p95 = measure("review queue (HTML page)", html[: max(50, REQUESTS // 4)])

    # --- the results page ------------------------------------------------------------------------
    results: list[Callable[[], float]] = []
    for _ in range(REQUESTS // 2):
        day = rng.randrange(2, 80)
        base = {
            "agent_id": f"scope-{rng.randrange(AGENTS)}",
            "label": rng.choice(["ALL", "AML", "normal"]),
            "since": (T_END - timedelta(days=day + rng.randrange(1, 14))).isoformat(),
            "until": (T_END - timedelta(days=day)).isoformat(),
        }
        if rng.random() < 0.3:
            base.pop("agent_id")

        def first_and_next(q: dict[str, Any] = base) -> float:
            ms, r = timed(client, "/api/v1/classifications", q)
            if r.json["next_cursor"]:
                ms2, _ = timed(client, "/api/v1/classifications", q | {"cursor": r.json["next_cursor"]})
                return max(ms, ms2)
            return ms

        results.append(lambda q=base: timed(client, "/api/v1/classifications", q)[0])
        results.append(first_and_next)
    rng.shuffle(results)
    results_p95 = measure("results page (API)", results)

    # --- ingest: the results' insert and their statuses, per batch ------------------------------
    insert_us, status_us = [], []
    settings = ReviewSettings()
    for b in range(INGEST_BATCHES):
        batch = [
            make_result(
                agent_id=f"scope-{i % AGENTS}", label=("ALL", "normal")[i % 2], low_confidence=i % 9 == 0
            )
            for i in range(BATCH)
        ]
        with db.transaction() as s:
            t0 = time.perf_counter()
            stored = insert_results(s, batch, datetime.now(timezone.utc))
            t1 = time.perf_counter()
            added = add_review_statuses(s, [r.result_id for r in batch], settings)
            t2 = time.perf_counter()
        assert len(stored) == added == BATCH
        if b >= 2:  # the first batches warm the statement caches
            insert_us.append((t1 - t0) * 1e6 / BATCH)
            status_us.append((t2 - t1) * 1e6 / BATCH)
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM review_status")) == ROWS + INGEST_BATCHES * BATCH
    ingest_status = sorted(status_us)[len(status_us) // 2]
    ingest_insert = sorted(insert_us)[len(insert_us) // 2]

    print(f"BENCH review_queue_p95_ms {queue_p95:.1f} ms")
    print(f"BENCH results_page_p95_ms {results_p95:.1f} ms")
    print(f"BENCH review_queue_page_p95_ms {page_p95:.1f} ms")
    print(f"BENCH review_status_ingest_us_per_row {ingest_status:.1f} us")
    print(f"BENCH hub_ingest_insert_us_per_row {ingest_insert:.1f} us")
