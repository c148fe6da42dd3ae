"""Benchmark: how fast one hub ingest worker drains a backlog of smear-field results (schema_version 3,
each with its cells) from Mosquitto into PostgreSQL.

The same harness as tests/benchmarks/test_ingest_bench.py (a private Mosquitto, a fresh PostgreSQL
database, the consumer in a process of its own started once the backlog is queued, the real
:class:`hub.ingest.IngestWorker` with the default batch settings), on field results instead of
single-image ones: ``LEUKONET_BENCH_INGEST_FIELDS`` fields (default 5,000) of
``LEUKONET_BENCH_INGEST_CELLS`` cells each (default 40, a ~5 KiB payload), from 10 agents. A field
and its cells go in with the same statement (:mod:`hub.ingest.results`). It checks zero loss and
zero duplicates (results and cells) and prints::

    BENCH hub_ingest_field_rows_per_s <results / s> rows/s
    BENCH hub_ingest_field_cells_per_s <cells / s> cells/s

No speed assert.
"""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import func, select

from hub.db.models import Classification, ResultCell
from shared import topics
from tests.benchmarks.test_ingest_bench import (
    PUBLISHERS,
    Backlog,
    Consumer,
    cpu_per_message,
    drain,
    elapsed,
    prepare_database,
    rows_of,
    start_bench_broker,
)
from tests.hub.cells_results import make_cell, make_field_result

pytestmark = pytest.mark.bench

FIELDS = int(os.environ.get("LEUKONET_BENCH_INGEST_FIELDS", "5000"))
CELLS = int(os.environ.get("LEUKONET_BENCH_INGEST_CELLS", "40"))


def field_backlog(prefix: str, n: int, cells: int) -> Backlog:
    """``n`` field results of ``cells`` cells each, from :data:`PUBLISHERS` agents ``<prefix>-NN``."""
    agents = [f"{prefix}-{i:02d}" for i in range(PUBLISHERS)]
    payloads: list[list[bytes]] = [[] for _ in agents]
    for k in range(n):
        i = k % PUBLISHERS
        field = [make_cell(60 * (j % 40), 60 * (j // 40), (j * 7 % 100) / 100, side=90) for j in range(cells)]
        payloads[i].append(make_field_result(agent_id=agents[i], cells=field).to_json())
    return Backlog(agents, [topics.build(a, topics.Kind.RESULTS) for a in agents], payloads)


def test_field_ingest_throughput(tmp_path, postgres_url):
    broker = start_bench_broker(tmp_path / "broker")
    run = uuid.uuid4().hex[:6]
    backlog = field_backlog(f"bf-{run}", FIELDS, CELLS)
    size = sum(len(p) for per_agent in backlog.payloads for p in per_agent) / backlog.total
    db = prepare_database(postgres_url, backlog.agents)
    try:
        reports = drain(
            [Consumer("hub", broker.port, f"hub-field-bench-{run}", tmp_path / "one", postgres_url)], backlog
        )
        rows, distinct = rows_of(db, backlog.agents)
        with db.session() as s:
            where = Classification.agent_id.in_(backlog.agents)
            cells = int(
                s.scalar(select(func.count()).select_from(ResultCell).join(Classification).where(where)) or 0
            )
        snap = reports[0].detail["stats"]
        print(
            f"\nbench: 1 worker stored {rows} fields ({distinct} distinct result ids) of {FIELDS} "
            f"and {cells} cells of {FIELDS * CELLS}; {snap['batches']} batches, "
            f"payload {size / 1024:.1f} KiB; "
            f"{cpu_per_message(reports, FIELDS)}"
        )
        assert rows == distinct == FIELDS and cells == FIELDS * CELLS
        rate = FIELDS / elapsed(reports)
        print(f"BENCH hub_ingest_field_rows_per_s {rate:.0f} rows/s")
        print(f"BENCH hub_ingest_field_cells_per_s {rate * CELLS:.0f} cells/s")
    finally:
        db.dispose()
        broker.stop()
