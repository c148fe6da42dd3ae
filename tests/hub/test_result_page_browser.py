"""The result page in a real browser (Debian's headless Chromium driven by Playwright): a viewer signs
in, follows a field's link from the fleet table (as the live refresh renders it), and sees one box
in the SVG and one card per cell, the unfamiliar badges, and no Content-Security-Policy violation."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from hub.ingest.writer import IngestWriter
from tests.hub.cells_results import make_cell, make_field_result
from tests.hub.conftest import USER_PASSWORD, add_user, browser_login, serve_app
from tests.hub.test_web_security import UPDATED, csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def live_hub(app, db) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def test_a_viewer_opens_a_field_and_sees_every_cell(app, live_hub, page, db, tmp_path):
    cells = [make_cell(60 + 210 * (i % 9), 50 + 230 * (i // 9), (i * 37 % 100) / 100) for i in range(23)]
    cells[4] = make_cell(2000, 700, 0.97, unfamiliar=True, ood_score=41.0)  # clear of the others
    field = make_field_result(agent_id="scope-1", cells=cells, unfamiliar=True, ood_score=33.0)
    IngestWriter(db).write([field])
    add_user(app, "viewer", "viewer")

    violations = csp_violations(page)
    page.goto(live_hub + "/")
    browser_login(page, "viewer", USER_PASSWORD)
    expect(page.locator("#refresh-status")).to_have_text(UPDATED, timeout=15000)  # rows rebuilt by the script
    row = page.locator("#results tbody tr", has=page.locator(f'a[href="/results/{field.result_id}"]'))
    expect(row.locator(".badge.unfamiliar")).to_have_text("unfamiliar")
    expect(row.locator(".cells-count")).to_have_text(re.compile(r"^ALL \d+ · normal \d+$"))
    row.locator("a.result-link").click()

    page.wait_for_url(f"{live_hub}/results/{field.result_id}")
    expect(page.locator("#field-svg rect.box")).to_have_count(len(cells))
    expect(page.locator("#cells article.cell-card")).to_have_count(len(cells))
    expect(page.locator("#result-unfamiliar")).to_be_visible()
    expect(page.locator("#cell-5 .badge.unfamiliar")).to_be_visible()
    expect(page.locator("#evidence-missing")).to_contain_text("Image not received")
    # the boxes are laid out at their coordinates: the SVG is wider than tall, as the cells are
    svg = page.locator("#field-svg").bounding_box()
    assert svg is not None and svg["width"] > svg["height"] > 0
    # clicking a box leads to its card
    page.locator("#field-svg a.box-link").nth(4).click()
    assert page.url.endswith("#cell-5")
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert violations == []
