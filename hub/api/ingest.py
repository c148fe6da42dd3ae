"""``GET /ingest/stats`` (readers): counters of the ingest worker running in this process."""

from __future__ import annotations

from typing import Any

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.schemas import IngestStatsOut
from hub.extensions import hub_ext
from hub.roles import READERS


@bp.get("/ingest/stats")
@documented(*READERS, responses={200: IngestStatsOut})
def ingest_stats() -> dict[str, Any]:
    """Counters of the ingest worker running in this process (``running: false`` when none runs here)."""
    stats = hub_ext.services.ingest_stats
    if stats is None:
        return {
            "running": False,
            "note": "no ingest worker in this process (scale-out workers log their own)",
        }
    return stats.snapshot()
