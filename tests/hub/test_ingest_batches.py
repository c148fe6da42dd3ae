"""The queue between paho's thread and the writer (when a batch is complete, how much may wait),
the batch histograms, and the garbage-collector setting of ingest processes."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from hub.ingest import IngestStats
from hub.ingest.batches import MIN_WINDOW, Batches, Incoming
from hub.ingest.runtime import GC_FIRST_GENERATION, tune_gc
from shared import topics
from tests.hub.conftest import make_result


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


def test_tune_gc_freezes_the_start_up_heap_and_raises_only_the_first_threshold():
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_FIRST_GENERATION, 10, 10)
        assert gc.get_freeze_count() > 0
        gc.set_threshold(GC_FIRST_GENERATION * 2, 10, 10)
        tune_gc()
        assert gc.get_threshold()[0] == GC_FIRST_GENERATION * 2  # never lowered
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
