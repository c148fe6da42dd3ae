"""``GET /classifications``: filtered, paginated results, newest first."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from sqlalchemy import func, select

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_query
from hub.api.schemas import ClassificationPage
from hub.api.serialize import classification_json
from hub.db.models import Classification
from hub.extensions import hub_ext
from hub.roles import READERS

MAX_PER_PAGE = 500
TIME_HINT = "must be an ISO 8601 time such as 2026-01-01T00:00:00Z"


def _parse_time(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(TIME_HINT) from None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    try:
        return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
    except OverflowError:
        raise ValueError(f"{TIME_HINT}, within years 1..9999 in UTC") from None


#: An optional query-string time: ISO 8601, UTC when it has no offset.
QueryTime = Annotated[datetime | None, BeforeValidator(_parse_time), AfterValidator(_as_utc)]


class ClassificationsQuery(QueryModel):
    page: int = Field(1, ge=1, le=10**9, title="1-based page")
    per_page: int = Field(50, ge=1, le=MAX_PER_PAGE, title="results per page")
    agent_id: str | None = Field(None, title="only this agent's results")
    label: str | None = Field(None, title="only results with this predicted label")
    since: QueryTime = Field(None, title="captured at or after (ISO 8601)")
    until: QueryTime = Field(None, title="captured before (ISO 8601, exclusive)")


@bp.get("/classifications")
@documented(*READERS, query=ClassificationsQuery, responses={200: ClassificationPage})
def list_classifications() -> dict[str, Any]:
    """Results newest first, filtered by agent, label and capture time, one page at a time.

    Filters: ``agent_id``, ``label``, ``since`` / ``until`` (captured_at, ISO 8601, until exclusive).
    """
    q = parse_query(ClassificationsQuery)
    conds = []
    if q.agent_id:
        conds.append(Classification.agent_id == q.agent_id)
    if q.label:
        conds.append(Classification.label == q.label)
    if q.since is not None:
        conds.append(Classification.captured_at >= q.since)
    if q.until is not None:
        conds.append(Classification.captured_at < q.until)
    with hub_ext.services.db.session() as s:
        total = s.scalar(select(func.count()).select_from(Classification).where(*conds)) or 0
        rows = s.scalars(
            select(Classification)
            .where(*conds)
            .order_by(Classification.captured_at.desc(), Classification.id.desc())
            .offset((q.page - 1) * q.per_page)
            .limit(q.per_page)
        ).all()
        items = [classification_json(c) for c in rows]
    return {"items": items, "page": q.page, "per_page": q.per_page, "total": total}
