"""``GET /healthz``: liveness plus database reachability and ingest counters (no auth)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from hub.extensions import hub_ext
from shared.logs import kv

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 ``{"status": "ok", ...}`` when the database answers, else 503 ``"degraded"``."""
    services = hub_ext.services
    database = "ok"
    try:
        with services.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning(kv("health_db_failed", error=str(exc)[:200]))
        database = "unreachable"
    stats = services.ingest_stats.snapshot() if services.ingest_stats else {"running": False}
    status = "ok" if database == "ok" else "degraded"
    body = {"status": status, "database": database, "ingest": stats}
    return jsonify(body), 200 if status == "ok" else 503
