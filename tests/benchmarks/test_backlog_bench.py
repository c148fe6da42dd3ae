"""Benchmark: backlog fairness at the issue's size, a 50,000-row backlog drained at 1,000 rows/s.

``tests/integration/test_backlog_fairness.py`` holds the drain limit's promises on a 20,000-row
backlog in the suite; this runs the same scenario (a private Mosquitto, the hub's ingest worker on
SQLite, agent A draining ``LEUKONET_BENCH_BACKLOG`` rows, default 50,000, while B and A send live
results) with the same checks, and prints what it measured (``make bench``)::

    BENCH backlog_drain_rows_per_s <rows / s> rows/s
    BENCH backlog_live_overtaken_max <A rows stored between a live result's commit and its storing> rows
    BENCH backlog_live_stored_after_max <A rows stored before a live result> rows
    BENCH backlog_live_latency_max_s <outbox commit to hub storing, worst live result> s

It fails on a broken promise (a live result kept waiting, a result lost or stored twice), never on
speed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.test_backlog_fairness import DRAIN_RATE, check_fair, drain, report, running_hub

pytestmark = pytest.mark.bench

BACKLOG = int(os.environ.get("LEUKONET_BENCH_BACKLOG", "50000"))


def test_a_50000_row_backlog_drains_without_starving_live_results(tmp_path: Path) -> None:
    with running_hub(tmp_path) as hub:
        run = drain(hub, tmp_path, BACKLOG, DRAIN_RATE)
        print(report(f"drain_rate_per_s={DRAIN_RATE:.0f}", run))
        check_fair(hub, run)
    print(f"\nBENCH backlog_drain_rows_per_s {run.backlog / run.drain_s:.0f} rows/s")
    print(f"BENCH backlog_live_overtaken_max {max(run.overtaken_by)} rows")
    print(f"BENCH backlog_live_stored_after_max {max(run.stored_after)} rows")
    print(f"BENCH backlog_live_latency_max_s {max(run.latency_s):.2f} s")
