"""The training page in headless Chromium: queue a job through the form, see it listed as queued,
watch a trainer's progress arrive without a reload, and cancel jobs with the CSRF-protected buttons."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.hub.conftest import auth, browser_login, serve_app
from tests.hub.test_training_jobs import claim, report
from tests.hub.test_web_security import csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def live(app) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def test_queue_see_progress_and_cancel(live, page, client, tmp_path):
    violations = csp_violations(page)
    page.goto(f"{live}/training")
    browser_login(page)
    page.wait_for_selector("#queue-form")

    page.fill("#f-name", "leuko")
    page.fill("#f-version", "1.1.0")
    page.fill("#f-dataset", "all-idb2-import")
    page.select_option("#f-mode", "scratch")
    page.fill("#f-steps", "200")
    page.click("#queue-submit")
    page.wait_for_selector(".notice")
    assert "queued: leuko 1.1.0" in page.inner_text(".notice")
    [job] = client.get("/api/v1/training-jobs", headers=auth("admin")).json["items"]
    row = page.locator(f'#jobs tr[data-job="{job["job_id"]}"]')
    assert "queued" in row.inner_text() and "leuko 1.1.0" in row.inner_text()
    assert job["created_by"] == "admin" and job["spec"]["steps"] == 200

    # a second job; a trainer claims the first and reports while the page is open
    page.fill("#f-name", "leuko")
    page.fill("#f-version", "1.2.0")
    page.fill("#f-dataset", "all-idb2-import")
    page.click("#queue-submit")
    page.wait_for_selector("#jobs tbody tr:nth-child(2)")
    assert claim(client, "gpu-1").json["job_id"] == job["job_id"]
    report(client, job["job_id"], "progress", "gpu-1", phase="train", done=50, total=200, eta_s=300)
    expect(row).to_contain_text("train 25%", use_inner_text=True, timeout=15000)
    assert "gpu-1" in row.inner_text() and "ETA 5 min" in row.inner_text()

    # cancel the queued one: it ends at once
    queued = page.locator("#jobs tr", has_text="1.2.0")
    queued.locator("button.cancel").click()
    page.wait_for_selector(".notice")
    assert "cancelled" in page.inner_text(".notice")
    assert "cancelled" in page.locator("#jobs tr", has_text="1.2.0").inner_text()
    # cancel the running one: the trainer is asked to stop and sees it in its next progress answer
    row.locator("button.cancel").click()
    page.wait_for_selector(".notice")
    assert "cancel: requested" in page.inner_text(".notice")
    assert "cancel requested" in row.inner_text()
    answer = report(client, job["job_id"], "progress", "gpu-1", phase="train", done=60, total=200)
    assert answer.json == {"cancel_requested": True, "state": "running"}
    error = "<img src=x onerror=alert(1)> stopped as the operator asked"
    report(client, job["job_id"], "fail", "gpu-1", error=error, cancelled=True)
    expect(row).to_contain_text(error, use_inner_text=True, timeout=15000)
    assert page.locator("#jobs button.cancel").count() == 0
    assert page.locator("#jobs img").count() == 0  # shown as text, not markup
    page.screenshot(path=str(tmp_path / "training.png"), full_page=True)
    assert violations == []  # training.js and the stylesheet work under the Content-Security-Policy
