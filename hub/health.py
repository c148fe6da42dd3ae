"""``GET /healthz``: liveness of the database and of this process's ingest loops, with counters (no auth)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from hub.errors import request_errors
from hub.extensions import hub_ext
from shared.logs import kv

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """200 ``{"status": "ok", ...}`` when the database answers and, where this process runs ingest,
    every ingest loop is alive; else 503 ``"degraded"`` with the ``problems``.

    ``ingest.loops`` gives each loop's liveness, restarts and the age of its last activity.
    """
    services = hub_ext.services
    problems: list[str] = []
    database = "ok"
    try:
        with services.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        log.warning(kv("health_db_failed", error=str(exc)[:200]))
        database = "unreachable"
        problems.append("the database does not answer")
    if services.ingest_stats is None:
        stats: dict[str, object] = {"running": False, "in_process": False}
    else:
        stats = {**services.ingest_stats.snapshot(), "in_process": True}
        if not stats["running"]:
            problems.append("ingest is not running")
        dead = services.ingest_stats.loops.dead()
        if stats["running"] and dead:
            problems.append(f"ingest loop(s) not running: {', '.join(dead)}")
    status = "degraded" if problems else "ok"
    body = {
        "status": status,
        "database": database,
        "ingest": stats,
        "request_errors": dict(request_errors(current_app)),
        "problems": problems,
    }
    return jsonify(body), 503 if problems else 200
