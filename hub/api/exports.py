"""``GET /classifications.csv`` and ``GET /classifications.fhir``: a filtered results view (the
same filters as ``GET /classifications``) as CSV, streamed at any size, or as a FHIR R4B Bundle of
at most ``limit`` results with a ``next`` link.

The CSV is read with ``yield_per`` (a server-side cursor on PostgreSQL): the rows are fetched and
written a batch at a time, so memory stays constant however many results match. The session lives
in the response's generator and closes when it ends or the client goes away.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from flask import Response, g, request, url_for
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from hub.api.blueprint import bp
from hub.api.classifications import (
    Cursor,
    FilterQuery,
    ResultFilters,
    check_cursor,
    export_query,
    next_cursor_of,
)
from hub.api.openapi import documented
from hub.api.params import parse_query
from hub.db.session import Database
from hub.exports.csv import csv_lines
from hub.exports.fhir import bundle
from hub.extensions import hub_ext
from hub.roles import READERS
from shared.logs import kv

log = logging.getLogger(__name__)

#: rows fetched per round trip while streaming the CSV
CSV_BATCH = 1000
#: results per FHIR Bundle at most (each is two resources)
MAX_FHIR = 1000
FHIR_JSON = "application/fhir+json"


def _token(value: str | None) -> str | None:
    if value is not None:
        Cursor.decode(value)
    return value


class FhirQuery(FilterQuery):
    cursor: Annotated[str | None, AfterValidator(_token)] = Field(
        None, max_length=256, title="the previous Bundle's next link carries it: the results after it"
    )
    limit: int = Field(100, ge=1, le=MAX_FHIR, title=f"results in the Bundle (at most {MAX_FHIR})")


class FhirBundleOut(BaseModel):
    """The outline of the FHIR R4B Bundle answered (the resources follow the FHIR specification)."""

    model_config = ConfigDict(extra="allow")

    resourceType: Literal["Bundle"] = Field(title="always Bundle")
    id: str = Field(title="this export's id")
    type: Literal["collection"] = Field(title="always collection")
    timestamp: str = Field(title="when the Bundle was made (FHIR instant)")
    link: list[dict[str, str]] = Field(title="relation self, and next when more results match")
    entry: list[dict[str, Any]] = Field(
        [], title="per result a DiagnosticReport, then the Observation it references (fullUrl urn:uuid)"
    )


def _stream(db: Database, filters: ResultFilters, who: str) -> Iterator[str]:
    rows = 0
    try:
        with db.session() as s:
            result = s.execute(export_query(filters).execution_options(yield_per=CSV_BATCH))
            for line in csv_lines((row[0], row[1]) for row in result):
                yield line
                rows += 1
    except GeneratorExit:
        log.info(kv("csv_export_abandoned", by=who, lines=rows))
        raise
    except Exception:
        # the status line has gone: the client sees a truncated download, the log says why
        log.exception(kv("csv_export_failed", by=who, lines=rows))
        raise
    log.info(kv("csv_export", by=who, results=max(rows - 1, 0)))


@bp.get("/classifications.csv")
@documented(*READERS, query=FilterQuery, responses={200: "text/csv"})
def export_csv() -> Response:
    """The results matching the filters as CSV, newest first, every one (streamed).

    Same filters as ``GET /classifications``. One header line, then one line per result. Text
    starting with ``=``, ``+``, ``-``, ``@``, tab or CR is prefixed with ``'`` so spreadsheets show
    it as text instead of running it as a formula.
    """
    filters = parse_query(FilterQuery).filters()
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    who = g.principal.name
    return Response(
        _stream(hub_ext.services.db, filters, who),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="leukonet-results-{stamp}.csv"'},
    )


@bp.get("/classifications.fhir")
@documented(*READERS, query=FhirQuery, responses={200: FhirBundleOut})
def export_fhir() -> Response:
    """Up to ``limit`` results matching the filters as a FHIR R4B Bundle (type collection).

    Per result a DiagnosticReport and its Observation; status ``final`` once signed final, else
    ``preliminary``. When more results match, the Bundle's ``next`` link fetches them. Served
    as ``application/fhir+json`` when the Accept header names it, else as ``application/json``.
    """
    q = parse_query(FhirQuery)
    filters = q.filters()
    after = check_cursor(q.cursor, filters)
    with hub_ext.services.db.session() as s:
        rows = [(r[0], r[1]) for r in s.execute(export_query(filters, after=after).limit(q.limit + 1))]
        page = rows[: q.limit]
        next_url = None
        if len(rows) > q.limit:
            args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "cursor"}
            args["cursor"] = next_cursor_of(page[-1][0], filters)
            next_url = url_for("api.export_fhir", _external=True, **args)
        doc = bundle(page, self_url=request.url, next_url=next_url)
        body = doc.model_dump_json(exclude_none=True)
    wants_fhir = FHIR_JSON in request.headers.get("Accept", "")
    return Response(body, mimetype=FHIR_JSON if wants_fhir else "application/json")
