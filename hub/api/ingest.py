"""``GET /ingest/stats`` (admin): counters of the ingest worker running in this process."""

from __future__ import annotations

from typing import Any

from hub.api.blueprint import bp
from hub.auth import require_roles
from hub.extensions import hub_ext


@bp.get("/ingest/stats")
@require_roles()
def ingest_stats() -> dict[str, Any]:
    stats = hub_ext.services.ingest_stats
    if stats is None:
        return {
            "running": False,
            "note": "no ingest worker in this process (scale-out workers log their own)",
        }
    return stats.snapshot()
