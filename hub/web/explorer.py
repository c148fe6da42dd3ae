"""The results explorer (``/results``): every filter of ``GET /api/v1/classifications`` as a GET
form (so a view is a link), a page of matching results newest first with their flags, review state
and specimen, a keyset "next page" link, and Export CSV / Export FHIR links carrying the filters.

The page reads the same statements as the API (:func:`hub.api.classifications.export_query`), so
the table, the CSV and the FHIR Bundle of one view hold the same results.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, abort, render_template, request
from pydantic import ValidationError

from hub.api.classifications import (
    ClassificationsQuery,
    check_cursor,
    export_query,
    next_cursor_of,
)
from hub.api.params import parameter_message
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.review.policy import State
from hub.web.guards import login_required
from shared.cells.spec import InputKind

bp = Blueprint("explorer", __name__, template_folder="../templates")
PER_PAGE = 50
#: the form's fields, in the order the API documents them
FILTERS = (
    "lab",
    "agent_id",
    "specimen_id",
    "label",
    "reviewed_label",
    "flagged",
    "unfamiliar",
    "review_state",
    "input_kind",
    "model_name",
    "model_version",
    "since",
    "until",
)


def _query() -> ClassificationsQuery:
    values = {k: v for k, v in request.args.items() if v != "" and k != "count"}
    values.setdefault("per_page", str(PER_PAGE))
    try:
        q = ClassificationsQuery.model_validate(values)
    except ValidationError as exc:
        abort(400, description=f"{parameter_message(exc)}; change or clear that filter")
    if q.page is not None:
        abort(400, description="page is not used here: follow the Next page link")
    return q


def _filter_args() -> dict[str, str]:
    """The view's filters as they came (empty ones left out): what links to it carry."""
    return {k: v for k, v in request.args.items() if k in FILTERS and v != ""}


@bp.get("/results")
@login_required
def explorer_page() -> str:
    """A page of filtered results (every signed-in person)."""
    q = _query()
    filters = q.filters()
    try:
        after = check_cursor(q.cursor, filters)
    except ApiError as exc:
        abort(400, description=str(exc))
    with hub_ext.services.db.session() as s:
        rows = [(r[0], r[1]) for r in s.execute(export_query(filters, after=after).limit(q.per_page + 1))]
        page = rows[: q.per_page]
        items: list[dict[str, Any]] = [
            {
                "result_id": str(c.result_id),
                "captured_at": c.captured_at.isoformat(),
                "lab": c.lab,
                "agent_id": c.agent_id,
                "specimen_id": c.specimen_id,
                "image_name": c.image_name,
                "label": c.label,
                "reviewed_label": st.current_label if st is not None else c.label,
                "confidence": c.confidence,
                "unfamiliar": c.unfamiliar,
                "low_confidence": c.low_confidence,
                "model": f"{c.model_name} {c.model_version}",
                "state": st.state if st is not None else State.UNREVIEWED.value,
                "signed_by": st.signed_by if st is not None else None,
            }
            for c, st in page
        ]
        next_cursor = next_cursor_of(page[-1][0], filters) if len(rows) > q.per_page else None
    args = _filter_args()
    query = urlencode(args)
    next_query = None
    if next_cursor is not None:
        next_query = urlencode({**args, "per_page": q.per_page, "cursor": next_cursor})
    return render_template(
        "explorer.html",
        items=items,
        args=args,
        query=query,
        next_query=next_query,
        first_page=after is None,
        per_page=q.per_page,
        states=[s.value for s in State],
        kinds=[k.value for k in InputKind],
    )
