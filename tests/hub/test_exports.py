"""GET /api/v1/classifications.csv (streamed, injection-safe) and .fhir (an R4B Bundle the
fhir.resources library parses back), with the explorer's filters, roles and paging."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from hub.config import HubConfig
from hub.db.session import Database
from hub.exports.csv import HEADER, safe_text
from hub.ingest.writer import IngestWriter
from tests.hub.conftest import auth, login_as, make_result
from tests.hub.explorer_data import T0, Seeded, seed
from tests.hub.review_fixtures import TWO, review_app


@pytest.fixture
def app(config: HubConfig) -> Any:
    from hub.app import close_app

    app = review_app(config, TWO)
    yield app
    close_app(app)


@pytest.fixture
def seeded(db: Database) -> Seeded:
    return seed(db)


def rows_of(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


def test_csv_has_a_header_and_one_line_per_filtered_result(client, seeded):
    r = client.get("/api/v1/classifications.csv?lab=Lab+A", headers=auth("trainer"))
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    body = r.get_data(as_text=True)
    assert body.splitlines()[0].split(",") == list(HEADER)
    rows = rows_of(body)
    assert {row["result_id"] for row in rows} == seeded.ids(lab="Lab A")
    assert [row["captured_at"] for row in rows] == sorted((row["captured_at"] for row in rows), reverse=True)
    final = [
        row
        for row in rows_of(
            client.get("/api/v1/classifications.csv", headers=auth("trainer")).get_data(as_text=True)
        )
        if row["result_id"] == str(seeded.final)
    ][0]
    assert (final["review_state"], final["signed_by"]) == ("final", "alice")
    assert final["signed_at"].endswith("Z")
    reviewed = rows_of(
        client.get("/api/v1/classifications.csv?review_state=reviewed", headers=auth("trainer")).get_data(
            as_text=True
        )
    )
    assert [(r["result_id"], r["label"], r["reviewed_label"]) for r in reviewed] == [
        (str(seeded.reviewed), "normal", "ALL")
    ]
    flagged = rows_of(
        client.get("/api/v1/classifications.csv?flagged=true", headers=auth("trainer")).get_data(as_text=True)
    )
    assert flagged and all(
        r["flags"] in ("unfamiliar", "low_confidence", "unfamiliar;low_confidence") for r in flagged
    )


def test_csv_escapes_what_a_spreadsheet_would_run(client, db):
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "plain"]
    IngestWriter(db).write(
        [
            make_result(
                agent_id=f"a{i}", specimen_id=text, captured_at=T0 + timedelta(seconds=i), schema_version=3
            )
            for i, text in enumerate(hostile)
        ]
    )
    rows = rows_of(client.get("/api/v1/classifications.csv", headers=auth("trainer")).get_data(as_text=True))
    got = {r["specimen_id"] for r in rows}
    assert got == {"'" + t for t in hostile[:-1]} | {"plain"}
    assert safe_text("a=b") == "a=b" and safe_text(None) == "" and safe_text("\tx") == "'\tx"


def test_csv_streams_ten_thousand_rows_a_line_at_a_time(client, db):
    n = 10_500
    batch = [make_result(agent_id="bulk", captured_at=T0 + timedelta(seconds=i)) for i in range(n)]
    IngestWriter(db).write(batch)
    r = client.get("/api/v1/classifications.csv?agent_id=bulk", headers=auth("trainer"), buffered=False)
    assert r.status_code == 200
    assert r.is_streamed  # the body is the route's generator, not a string built in memory
    chunks = iter(r.response)
    first = next(chunks)
    assert (first.decode() if isinstance(first, bytes) else first).startswith("captured_at,lab,agent_id")
    lines = 1
    for _chunk in chunks:
        lines += 1
    r.close()
    assert lines == n + 1  # one chunk per line: nothing accumulated


def test_fhir_bundle_parses_back_and_carries_the_review_status(client, seeded):
    r = client.get("/api/v1/classifications.fhir?limit=1000", headers=auth("trainer"))
    assert r.status_code == 200 and r.mimetype == "application/json"
    asked = client.get(
        "/api/v1/classifications.fhir?limit=1", headers={**auth("trainer"), "Accept": "application/fhir+json"}
    )
    assert asked.mimetype == "application/fhir+json"
    doc = Bundle.model_validate_json(r.get_data())  # the library validates every resource
    assert doc.type == "collection"
    entries = doc.entry or []
    reports = [e.resource for e in entries if isinstance(e.resource, DiagnosticReport)]
    observations = {
        f"urn:uuid:{e.resource.id}": e.resource for e in entries if isinstance(e.resource, Observation)
    }
    assert len(reports) == len(observations) == len(seeded.results)
    by_result = {rep.identifier[0].value: rep for rep in reports}
    final = by_result[str(seeded.final)]
    assert final.status == "final"
    assert [p.display for p in final.performer] == ["alice"]
    obs = observations[final.result[0].reference]
    assert (
        obs.status == "final"
        and obs.performer[0].display == "alice"
        and obs.performer[0].type == "Practitioner"
    )
    assert obs.code.text == "leukemia screening suggestion"
    assert obs.method.text and "leuko 1.0.0" in obs.method.text
    for rid in (seeded.needs_second, seeded.reviewed):
        rep = by_result[str(rid)]
        assert rep.status == "preliminary" and not rep.performer
        assert observations[rep.result[0].reference].status == "preliminary"
    reviewed_obs = observations[by_result[str(seeded.reviewed)].result[0].reference]
    assert reviewed_obs.valueCodeableConcept.text == "ALL"  # the label after review
    model_label = [c for c in reviewed_obs.component if c.code.coding[0].code == "model-label"][0]
    assert model_label.valueCodeableConcept.text == "normal"
    assert final.specimen[0].identifier.value.startswith("SP-")


def test_fhir_pages_by_its_next_link_and_caps_the_bundle(client, seeded):
    seen: list[str] = []
    url = "/api/v1/classifications.fhir?lab=Lab+B&limit=5"
    for _ in range(20):
        body = client.get(url, headers=auth("trainer"))
        assert body.status_code == 200, body.get_json()
        doc = Bundle.model_validate_json(body.get_data())
        seen += [
            e.resource.identifier[0].value
            for e in doc.entry or []
            if isinstance(e.resource, DiagnosticReport)
        ]
        nxt = [link.url for link in doc.link if link.relation == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        assert parse_qs(parts.query)["lab"] == ["Lab B"]
        url = f"{parts.path}?{parts.query}"
    assert sorted(seen) == sorted(seeded.ids(lab="Lab B")) and len(seen) == len(set(seen))
    too_many = client.get("/api/v1/classifications.fhir?limit=1001", headers=auth("trainer"))
    assert too_many.status_code == 400 and "limit" in too_many.get_json()["error"]["message"]


def test_an_empty_view_is_a_valid_empty_bundle_and_csv(client, seeded):
    doc = Bundle.model_validate_json(
        client.get("/api/v1/classifications.fhir?lab=nowhere", headers=auth("trainer")).get_data()
    )
    assert not doc.entry and doc.link[0].relation == "self"
    assert (
        client.get("/api/v1/classifications.csv?lab=nowhere", headers=auth("trainer"))
        .get_data(as_text=True)
        .count("\n")
        == 1
    )


@pytest.mark.parametrize("path", ["/api/v1/classifications.csv", "/api/v1/classifications.fhir"])
def test_exports_are_for_readers(app, client, seeded, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers=auth("agent")).status_code == 403
    for role in ("viewer", "reviewer", "operator"):
        other = app.test_client()
        login_as(app, other, role)
        assert other.get(path).status_code == 200, role
    assert json.loads(client.get(path, headers=auth("agent")).data)["error"]["code"] == "forbidden"
