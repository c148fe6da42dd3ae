"""MQTT ingest: validate agent messages, batch results into transactions, PUBACK after commit."""

from hub.ingest.runtime import tune_gc
from hub.ingest.stats import IngestStats
from hub.ingest.worker import IngestWorker
from hub.ingest.writer import BatchOutcome, IngestWriter

__all__ = ["BatchOutcome", "IngestStats", "IngestWorker", "IngestWriter", "tune_gc"]
