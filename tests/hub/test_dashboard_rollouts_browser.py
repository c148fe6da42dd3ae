"""The rollout page in headless Chromium: live progress and failure reasons without a reload, no
markup injection from agent-supplied text, and the Pause button (CSRF form) audited with the person's name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from shared.schemas import ModelEventKind
from tests.hub.conftest import auth, browser_login, serve_app
from tests.hub.test_web_security import csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def live(env) -> Iterator[str]:
    with serve_app(env.app) as url:
        yield url


def test_rollout_page_live_progress_and_pause(env, live, page, tmp_path):
    env.agents(4)
    r = env.start(stages=[50, 100], success_threshold=1.0, error_threshold=0.5)
    violations = csp_violations(page)
    page.goto(f"{live}/rollouts/{r['rollout_id']}")
    browser_login(page)
    page.wait_for_selector("#groups tbody tr")
    assert "running" in page.inner_text("#rollout-state")
    assert "No failures." in page.inner_text("#failures")

    # reports arrive while the page is open: the 3 s refresh shows them without a reload
    first = env.targets(r, "desired")
    env.report(r, first[:1], ModelEventKind.FAILED, detail="<img src=x onerror=alert(1)> smoke test")
    expect(page.locator("#failures")).to_contain_text(
        "onerror=alert(1)> smoke test", use_inner_text=True, timeout=15000
    )
    assert page.locator("#failures img").count() == 0
    assert page.inner_text("#failures-count") == "(1)"

    page.click("#action-pause")
    page.wait_for_selector(".notice")
    assert "pause: done" in page.inner_text(".notice")
    assert page.inner_text("#rollout-state") == "paused"
    entry = env.client.get("/api/v1/audit", headers=auth("admin")).json["items"][0]
    assert (entry["actor"], entry["action"]) == ("admin", "rollout.pause")
    page.screenshot(path=str(tmp_path / "rollout.png"), full_page=True)
    assert violations == []  # rollout.js and the stylesheet work under the Content-Security-Policy
