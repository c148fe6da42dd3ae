"""The garbage-collector settings of a process that runs an ingest worker (``hub ingest``, ``hub serve``).

An ingest worker keeps a batch of validated messages alive until its transaction commits: a few
GC-tracked objects per message (the pydantic model, its dicts, its nested models). With CPython's
default thresholds the first generation is collected every 700 allocations, so a batch of 1,000
results goes through several collections, is promoted to the oldest generation, and every few
batches a full collection walks every object the process holds (Flask, SQLAlchemy, pydantic
schemas: some 125,000 in ``hub ingest``) although the batch is gone by then. The ingest benchmark
(tests/benchmarks/test_ingest_bench.py) measured, with ``ingest.batch_size`` 1000, 93 us of CPU per
message with CPython's defaults and 72 us after :func:`tune_gc` (8,000 and 10,500 rows/s); with
batch_size 200 it made no difference.

:func:`tune_gc` is process-wide, so only a composition root calls it, once, after start-up.
"""

from __future__ import annotations

import gc
import logging

from shared.logs import kv

log = logging.getLogger(__name__)

#: first-generation threshold: a batch of 1,000 results allocates ~7,000 tracked objects and frees
#: them when it commits, before a collection would find them
GC_FIRST_GENERATION = 20_000


def tune_gc() -> None:
    """Move what start-up built out of the collector's sight (``gc.freeze``) and raise the first
    generation's threshold to :data:`GC_FIRST_GENERATION` (never lowers it)."""
    gc.collect()
    gc.freeze()
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, GC_FIRST_GENERATION), second, third)
    log.info(kv("gc_tuned", frozen=gc.get_freeze_count(), thresholds=",".join(map(str, gc.get_threshold()))))
