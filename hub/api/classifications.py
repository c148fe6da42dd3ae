"""``GET /classifications``: filtered, paginated results, newest first."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import request
from sqlalchemy import func, select

from hub.api.blueprint import bp
from hub.api.serialize import classification_json
from hub.auth import require_roles
from hub.config import Role
from hub.db.models import Classification
from hub.errors import ApiError
from hub.extensions import hub_ext

MAX_PER_PAGE = 500


def int_arg(name: str, default: int, lo: int, hi: int) -> int:
    """Query parameter ``name`` as an int in ``lo..hi`` (``default`` when absent); 400 otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _time_arg(name: str) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be an ISO 8601 time such as 2026-01-01T00:00:00Z, got {raw!r}",
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@bp.get("/classifications")
@require_roles(Role.TRAINER)
def list_classifications() -> dict[str, Any]:
    """Filters: ``agent_id``, ``label``, ``since`` / ``until`` (captured_at, ISO 8601, until exclusive)."""
    page = int_arg("page", 1, 1, 10**9)
    per_page = int_arg("per_page", 50, 1, MAX_PER_PAGE)
    conds = []
    if agent_id := request.args.get("agent_id"):
        conds.append(Classification.agent_id == agent_id)
    if label := request.args.get("label"):
        conds.append(Classification.label == label)
    if (since := _time_arg("since")) is not None:
        conds.append(Classification.captured_at >= since)
    if (until := _time_arg("until")) is not None:
        conds.append(Classification.captured_at < until)
    with hub_ext.services.db.session() as s:
        total = s.scalar(select(func.count()).select_from(Classification).where(*conds)) or 0
        rows = s.scalars(
            select(Classification)
            .where(*conds)
            .order_by(Classification.captured_at.desc(), Classification.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        items = [classification_json(c) for c in rows]
    return {"items": items, "page": page, "per_page": per_page, "total": total}
