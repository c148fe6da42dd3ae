"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright): login, the
agents and classifications tables, the live refresh from the API, and no script injection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from hub.ingest.writer import IngestWriter
from shared.schemas import AgentState, AgentStatus
from tests.hub.conftest import browser_login, make_result, serve_app
from tests.hub.test_web_security import csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def live_hub(app, db) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def test_dashboard_login_tables_and_live_refresh(live_hub, page, db, tmp_path):
    writer = IngestWriter(db)
    writer.write(
        [
            AgentStatus(
                agent_id="scope-1",
                state=AgentState.ONLINE,
                lab="Lab A",
                model_name="leuko",
                model_version="1.0.0",
                device="CPU",
            )
        ]
    )
    writer.write(
        [
            make_result(
                agent_id="scope-1",
                label="ALL",
                confidence=0.97,
                image_name="<img src=x onerror=alert(1)>.png",
            )
        ]
    )

    violations = csp_violations(page)
    page.goto(live_hub + "/")
    assert "/login" in page.url  # the dashboard needs a session
    browser_login(page, "admin", "wrong password")
    assert "/login" in page.url and "Wrong user name or password" in page.inner_text("#login-error")

    browser_login(page)
    page.wait_for_selector("#agents tbody tr")
    agents_text = page.inner_text("#agents")
    assert "scope-1" in agents_text and "online" in agents_text and "1.0.0" in agents_text
    results_text = page.inner_text("#results")
    assert "<img src=x onerror=alert(1)>.png" in results_text  # shown as text, not markup
    assert page.locator("#results img").count() == 0

    # A new result arrives while the page is open: the 5 s refresh shows it without a reload.
    writer.write([make_result(agent_id="scope-2", label="normal", confidence=0.55, image_name="late.png")])
    # (a locator assertion: wait_for_function evaluates its predicate with eval, which the CSP refuses)
    expect(page.locator("#results")).to_contain_text("late.png", use_inner_text=True, timeout=15000)
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert violations == []  # the scripts and styles all work under the Content-Security-Policy
