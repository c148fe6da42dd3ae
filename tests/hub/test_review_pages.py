"""The review pages of the dashboard (Flask test client): the queue in urgency order with its views
and pages, a result's review panel, the forms (CSRF, version, 403 for viewers, refusals shown with
their status), and in Chromium the keyboard: j / k / Enter in the queue, r + digit, s, n."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient

from hub.app import close_app
from hub.config import HubConfig
from hub.review.service import find_result
from hub.web.guards import login_required
from hub.web.review import review_panel_context
from shared.schemas import ClassificationResult
from tests.hub.conftest import USER_PASSWORD, add_user, browser_login, csrf, login_as, make_result, serve_app
from tests.hub.review_fixtures import T0, TWO, field_result, kinds, review_app, status, store
from tests.hub.test_web_security import csp_violations


@pytest.fixture
def app(config: HubConfig) -> Iterator[Flask]:
    application = review_app(config)
    try:
        yield application
    finally:
        close_app(application)


@pytest.fixture
def results(app: Flask, db: Any) -> dict[str, ClassificationResult]:
    stored = kinds()
    stored["field"] = field_result(image_name="field-<b>x</b>.png")
    store(db, list(stored.values()))
    return stored


def html_of(client: FlaskClient, url: str, status_code: int = 200) -> str:
    r = client.get(url)
    assert r.status_code == status_code, r.data[:500]
    return r.get_data(as_text=True)


def form_fields(html: str, form_id: str) -> dict[str, str]:
    """The hidden inputs of the form ``form_id`` in ``html``."""
    m = re.search(rf'<form[^>]*id="{form_id}".*?</form>', html, re.S)
    assert m, f"no form {form_id}"
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', m.group(0)))


def test_the_queue_lists_results_most_urgent_first_for_every_signed_in_person(app, client, results):
    assert client.get("/review").status_code == 302  # signed in only
    login_as(app, client, "viewer")
    html = html_of(client, "/review")
    order = re.findall(r'data-href="/review/([0-9a-f-]{36})"', html)
    expected = ["flagged", "positive", "field", "low", "negative"]
    assert order == [str(results[k].result_id) for k in expected]
    assert "field-&lt;b&gt;x&lt;/b&gt;.png" in html and "<b>x</b>" not in html  # escaped
    assert "1 ALL, 2 normal" in html and "unfamiliar" in html
    assert "Your role reads the queue; reviewers and admins review." in html
    assert "<script>" not in html and "style=" not in html  # the CSP allows neither
    assert html_of(client, "/review?view=final").count('class="qrow') == 0
    assert "unknown view" in html_of(client, "/review?view=done", 400)
    assert "not a cursor of this queue view" in html_of(client, "/review?cursor=abc", 400)


def test_queue_pages_follow_the_next_link(app, client, db):
    store(db, [make_result(label="ALL", captured_at=T0 + timedelta(seconds=i)) for i in range(53)])
    login_as(app, client, "reviewer")
    first = html_of(client, "/review")
    assert first.count('class="qrow') == 50 and "<kbd>j</kbd>" in first
    link = re.search(r'<a href="([^"]+)" id="queue-next"', first)
    assert link
    second = html_of(client, link.group(1).replace("&amp;", "&"))
    assert (
        second.count('class="qrow') == 3 and 'id="queue-next"' not in second and 'id="queue-first"' in second
    )


def test_a_viewer_sees_the_review_but_no_controls_and_cannot_post(app, client, results):
    rid = results["negative"].result_id
    login_as(app, client, "viewer")
    html = html_of(client, f"/review/{rid}")
    assert 'id="review-panel"' in html and 'id="review-readonly"' in html
    assert "review-confirm-form" not in html and "review-sign-form" not in html
    token = csrf(html)  # the sign-out form's: a viewer's page has no review form
    for url in (f"/review/{rid}/action", f"/review/{rid}/sign"):
        r = client.post(url, data={"csrf_token": token, "action": "confirm", "version": "1"})
        assert r.status_code == 403, url
    assert status(app.extensions["leukonet"].db, rid).version == 1
    assert html_of(client, "/review/0b5f7e4c-0000-4000-8000-000000000000", 404)
    assert html_of(client, "/review/not-a-uuid", 404)


def test_a_reviewer_confirms_reclassifies_and_signs_through_the_forms(app, client, results, db):
    rid = results["positive"].result_id
    login_as(app, client, "reviewer")
    html = html_of(client, f"/review/{rid}")
    assert "a positive result needs a review before sign-off" in html
    assert re.search(r'id="review-sign" disabled', html)
    confirm = form_fields(html, "review-confirm-form")
    assert confirm["action"] == "confirm" and confirm["version"] == "1"
    assert client.post(f"/review/{rid}/action", data={**confirm, "csrf_token": ""}).status_code == 400
    r = client.post(f"/review/{rid}/action", data=confirm)
    assert r.status_code == 303 and r.headers["Location"] == f"/review/{rid}"
    html = html_of(client, f"/review/{rid}")
    assert "confirm: done; the result is reviewed" in html
    # the same form again is stale: refused with the page and its status
    r = client.post(f"/review/{rid}/action", data=confirm)
    assert r.status_code == 409 and "changed since you loaded it" in r.get_data(as_text=True)
    form = form_fields(html, "review-reclassify-form")
    r = client.post(f"/review/{rid}/action", data={**form, "label": "AML"})
    assert r.status_code == 422 and "&#39;AML&#39; cannot be chosen" in r.get_data(as_text=True)
    r = client.post(f"/review/{rid}/action", data={**form, "label": "other", "comment": "a plasma cell"})
    assert r.status_code == 303
    html = html_of(client, f"/review/{rid}")
    assert "ALL → other" in html and "a plasma cell" in html
    sign = form_fields(html, "review-sign-form")
    r = client.post(f"/review/{rid}/sign", data={**sign, "return_to": "https://evil.example/"})
    assert r.status_code == 303 and r.headers["Location"] == "/"  # never off-site
    html = html_of(client, f"/review/{rid}")
    assert 'id="review-state">final' in html and "review-confirm-form" not in html
    assert status(db, rid).signed_by == "reviewer"


def test_a_cell_is_reclassified_with_the_cell_form(app, client, results, db):
    rid = results["field"].result_id
    login_as(app, client, "reviewer")
    html = html_of(client, f"/review/{rid}")
    assert 'max="3"' in html  # three cells
    form = form_fields(html, "review-cell-form")
    r = client.post(f"/review/{rid}/action", data={**form, "cell_number": "2", "label": "normal"})
    assert r.status_code == 303
    html = html_of(client, f"/review/{rid}")
    assert re.search(r'id="review-cells".*<td class="num">2</td><td>ALL</td>', html, re.S)
    assert 'id="review-current-label">ALL' in html  # the field's label is the reviewer's to decide
    for bad in ("0", "x", "4"):
        r = client.post(
            f"/review/{rid}/action", data={**form_fields(html, "review-cell-form"), "cell_number": bad}
        )
        assert r.status_code == 422, bad


def test_two_person_rule_on_the_page(tmp_path, keys, config):
    app = review_app(config, TWO)
    try:
        client = app.test_client()
        stored = kinds()
        db = app.extensions["leukonet"].db
        store(db, list(stored.values()))
        rid = stored["positive"].result_id
        login_as(app, client, "reviewer")
        url = f"/review/{rid}"
        client.post(f"{url}/action", data=form_fields(html_of(client, url), "review-confirm-form"))
        client.post(f"{url}/sign", data=form_fields(html_of(client, url), "review-sign-form"))
        html = html_of(client, url)
        assert "a second reviewer must sign too" in html and "you signed first" in html
        assert "needed: a different reviewer signs" in html
        r = client.post(f"{url}/sign", data=form_fields(html, "review-sign-form"))
        assert r.status_code == 409 and "Not signed: two-person rule" in r.get_data(as_text=True)
        other = app.test_client()
        add_user(app, "second", "reviewer")
        login_as_user(other, "second")
        r = other.post(f"{url}/sign", data=form_fields(html_of(other, url), "review-sign-form"))
        assert r.status_code == 303 and status(db, rid).state == "final"
    finally:
        close_app(app)


def login_as_user(client: FlaskClient, username: str) -> None:
    token = csrf(client.get("/login").get_data(as_text=True))
    r = client.post("/login", data={"csrf_token": token, "username": username, "password": USER_PASSWORD})
    assert r.status_code == 302


def test_next_in_queue_is_linked_from_the_panel(app, client, results):
    login_as(app, client, "reviewer")
    html = html_of(client, f"/review/{results['flagged'].result_id}")
    assert f'href="/review/{results["positive"].result_id}" id="review-next"' in html
    assert f'data-next-url="/review/{results["positive"].result_id}"' in html


def test_the_panel_included_by_another_page_comes_back_to_it(app, client, results):
    """The contract of ``_review_panel.html`` for the result page: another view builds the context
    with its own endpoint, includes the partial, and the forms and "next" lead back to that page."""

    def probe(result_id: str) -> str:
        with app.extensions["leukonet"].db.transaction() as s:
            row = find_result(s, uuid.UUID(result_id))
            panel = review_panel_context(s, row, page="probe")
            return render_template_string('{% include "_review_panel.html" %}', review_panel=panel)

    app.add_url_rule("/probe/<result_id>", endpoint="probe", view_func=login_required(probe))
    login_as(app, client, "reviewer")
    rid, following = results["flagged"].result_id, results["positive"].result_id
    html = html_of(client, f"/probe/{rid}")
    assert form_fields(html, "review-confirm-form")["return_to"] == f"/probe/{rid}"
    assert f'data-next-url="/probe/{following}"' in html and "review.js" in html and "review.css" in html
    r = client.post(f"/review/{rid}/action", data=form_fields(html, "review-confirm-form"))
    assert r.status_code == 303 and r.headers["Location"] == f"/probe/{rid}"


# --- the keyboard, in Chromium -------------------------------------------------------------------


@pytest.mark.browser
def test_keyboard_review_in_chromium(app, db, page, results):
    with serve_app(app) as url:
        violations = csp_violations(page)
        add_user(app, "rita", "reviewer")
        page.goto(url + "/review")
        browser_login(page, "rita", USER_PASSWORD)
        page.wait_for_selector("#review-queue tr.qrow")
        page.keyboard.press("j")
        page.keyboard.press("j")  # the second row: the positive result
        page.keyboard.press("Enter")
        page.wait_for_selector("#review-panel")
        rid = results["positive"].result_id
        assert page.url.endswith(f"/review/{rid}")
        page.keyboard.press("r")
        page.keyboard.press("4")  # 1 ALL, 2 normal, 3 unsure, 4 other
        page.wait_for_selector("text=reclassify: done")
        assert page.inner_text("#review-current-label") == "other"
        page.keyboard.press("s")
        page.wait_for_selector("text=signed: the result is final")
        assert page.inner_text("#review-state") == "final"
        page.keyboard.press("n")
        page.wait_for_url(re.compile(r"/review/(?!" + str(rid) + ")"))
        page.keyboard.press("c")
        page.wait_for_selector("text=confirm: done")
        assert violations == []
    assert status(db, rid).state == "final"
