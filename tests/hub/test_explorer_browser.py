"""The results explorer in Chromium: a reviewer signs in, filters, opens a result and comes back,
downloads the view as CSV and as FHIR from the page's buttons and checks what they hold, then
zooms and pans a field's evidence image on its result page."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from playwright.sync_api import expect

from hub.config import HubConfig
from tests.hub.conftest import USER_PASSWORD, add_user, browser_login, serve_app
from tests.hub.explorer_data import T0, seed
from tests.hub.review_fixtures import TWO, field_result, review_app, store
from tests.hub.test_evidence import png, put, sha
from tests.hub.test_web_security import csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def app(config: HubConfig) -> Any:
    from hub.app import close_app

    app = review_app(config, TWO)
    yield app
    close_app(app)


@pytest.fixture
def live_hub(app, db) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def test_a_reviewer_filters_opens_a_result_and_exports_the_view(live_hub, app, db, page, tmp_path: Path):
    seeded = seed(db)
    flagged_a = [
        r for r in reversed(seeded.results) if r.lab == "Lab A" and (r.unfamiliar or r.low_confidence)
    ]
    add_user(app, "rita", "reviewer")
    violations = csp_violations(page)
    page.goto(live_hub + "/results")
    browser_login(page, "rita", USER_PASSWORD)
    page.wait_for_selector("#explorer-filters")
    assert page.locator("#explorer tbody tr.explorer-row").count() == len(seeded.results)

    page.fill("#f-lab", "Lab A")
    page.select_option("#f-flagged", "true")
    page.click("#apply-filters")
    page.wait_for_url("**/results?*")
    assert "lab=Lab+A" in page.url and "flagged=true" in page.url and "agent_id" not in page.url
    rows = page.locator("#explorer tbody tr.explorer-row")
    assert rows.count() == len(flagged_a)
    assert [rows.nth(i).get_attribute("data-result-id") for i in range(rows.count())] == [
        str(r.result_id) for r in flagged_a
    ]

    first = flagged_a[0]
    page.click(f'tr[data-result-id="{first.result_id}"] a.result-link')
    page.wait_for_url(f"**/results/{first.result_id}")
    assert first.image_name in page.inner_text("#decision")
    page.go_back()
    page.wait_for_selector("#explorer")
    assert page.locator("#f-lab").input_value() == "Lab A"

    with page.expect_download() as info:
        page.click("#export-csv")
    csv_path = tmp_path / "view.csv"
    info.value.save_as(csv_path)
    lines = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert [line["result_id"] for line in lines] == [str(r.result_id) for r in flagged_a]
    assert all(line["lab"] == "Lab A" and line["flags"] for line in lines)

    with page.expect_download() as info:
        page.click("#export-fhir")
    fhir_path = tmp_path / "view.fhir.json"
    info.value.save_as(fhir_path)
    doc = Bundle.model_validate_json(fhir_path.read_bytes())
    reports = [e.resource for e in doc.entry or [] if isinstance(e.resource, DiagnosticReport)]
    assert [rep.identifier[0].value for rep in reports] == [str(r.result_id) for r in flagged_a]
    assert {rep.status for rep in reports} <= {"preliminary", "final"}
    page.screenshot(path=str(tmp_path / "explorer.png"), full_page=True)

    # a field whose image the hub holds: shown with its boxes, zoomed by button and wheel, panned by drag
    body = png(width=400, height=200, seed=3)
    field = field_result(image_sha256=sha(body), lab="Lab A", captured_at=T0 - timedelta(days=1))
    store(db, [field])
    assert put(app.test_client(), sha(body), body).status_code == 201
    page.goto(f"{live_hub}/results/{field.result_id}")
    svg = page.locator("#evidence-svg")
    expect(svg).to_have_attribute("viewBox", "0 0 400 200")
    assert page.locator("#evidence-svg rect.box").count() == 3
    assert page.evaluate("document.getElementById('evidence-image').getBBox().width") == 400
    page.click("#zoom-in")
    zoomed = [float(v) for v in (svg.get_attribute("viewBox") or "").split()]
    assert zoomed[2] < 400 and zoomed[0] > 0  # zoomed about the centre
    page.click("#zoom-fit")
    expect(svg).to_have_attribute("viewBox", "0 0 400 200")
    frame = svg.bounding_box()
    assert frame is not None
    page.mouse.move(frame["x"] + frame["width"] / 2, frame["y"] + frame["height"] / 2)
    page.mouse.wheel(0, -300)
    wheeled = [float(v) for v in (svg.get_attribute("viewBox") or "").split()]
    assert wheeled[2] < 400
    page.mouse.down()
    page.mouse.move(frame["x"] + frame["width"] / 2 + 60, frame["y"] + frame["height"] / 2 + 5, steps=5)
    page.mouse.up()
    panned = [float(v) for v in (svg.get_attribute("viewBox") or "").split()]
    assert panned[0] < wheeled[0] and panned[2] == wheeled[2]  # dragged right: the view moved left
    assert f"/results/{field.result_id}" in page.url  # the drag clicked no box
    assert violations == []
