"""Dashboard: sign in with a user name and password, the page lists agents and results, user data is
escaped, and the page's API reads use the session with the person's role (never for writes)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from hub.ingest.writer import IngestWriter
from shared.schemas import AgentState, AgentStatus, Vitals
from tests.hub.conftest import (
    ADMIN_PASSWORD,
    browser_login,
    csrf,
    login,
    login_as,
    make_result,
    serve_app,
)
from tests.hub.test_web_security import csp_violations


def test_index_redirects_to_login(client):
    r = client.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.get("/login").status_code == 200


def test_wrong_password_is_refused(client):
    r = login(client, password="nope")
    assert r.status_code == 401 and b"Wrong user name or password." in r.data
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/agents").status_code == 401


def test_dashboard_renders_agents_and_results_after_login(client, db):
    w = IngestWriter(db)
    w.write(
        [
            AgentStatus(
                agent_id="scope-1",
                state=AgentState.ONLINE,
                lab="Lab A",
                model_name="leuko",
                model_version="1.2.3",
                device="CPU",
            ),
            AgentStatus(agent_id="scope-2", state=AgentState.OFFLINE, lab="Lab B"),
        ]
    )
    w.write(
        [
            make_result(
                agent_id="scope-1", image_name="smear-<b>x</b>.png", confidence=0.55, low_confidence=True
            ),
            make_result(agent_id="scope-2", label="normal", image_name="smear-2.png", confidence=0.97),
        ]
    )
    r = login(client)
    assert r.status_code == 302 and r.headers["Location"].endswith("/")
    page = client.get("/")
    assert page.status_code == 200
    html = page.data.decode()
    for text in (
        "scope-1",
        "scope-2",
        "Lab A",
        "1.2.3",
        "online",
        "offline",
        "smear-2.png",
        "97.0%",
        "low confidence",
        "normal",
    ):
        assert text in html, text
    assert "smear-&lt;b&gt;x&lt;/b&gt;.png" in html and "<b>x</b>" not in html
    assert "dashboard.js" in html
    # the page's fetch() calls work with the session, for reads only
    assert client.get("/api/v1/classifications?per_page=50").json["total"] == 2
    assert client.get("/api/v1/agents").status_code == 200
    put = client.put("/api/v1/agents/scope-1/desired", json={"model_name": "x", "model_version": "1.0.0"})
    assert put.status_code == 401
    with client.get("/static/dashboard.js") as js:
        assert js.status_code == 200 and b"textContent" in js.data


def test_logout_and_open_redirect_guard(client):
    for target in ("//evil.example/x", "https://evil.example/x", "/\\evil.example/x"):
        r = login(client, "admin", ADMIN_PASSWORD, next=target)
        assert r.status_code == 302 and "evil.example" not in r.headers["Location"], target
    assert login(client, next="/models").headers["Location"] == "/models"
    assert client.get("/").status_code == 200
    token = csrf(client.get("/").data.decode())
    assert client.post("/logout").status_code == 400  # without the form's CSRF token: nothing happens
    assert client.get("/").status_code == 200
    client.post("/logout", data={"csrf_token": token})
    assert client.get("/").status_code == 302


def test_api_reads_through_the_session_carry_the_persons_role(app, client):
    login_as(app, client, "viewer")
    assert client.get("/api/v1/agents").status_code == 200
    assert client.get("/api/v1/audit").status_code == 200
    entry = client.get("/api/v1/audit").json["items"][0]
    assert (entry["actor"], entry["action"]) == ("viewer", "login.ok")
    r = client.put("/api/v1/agents/x/tags", json={"tags": ["a"]})
    assert r.status_code == 401  # a session never writes through the API (CSRF), whatever the role


# --- the fleet table's backlog column ---------------------------------------------------------


def backlog_cell(html: str, agent_id: str) -> str:
    """The text of ``agent_id``'s Backlog cell in the fleet table, tags included."""
    row = re.search(rf'<tr>\s*<td><a href="/agents/{agent_id}">.*?</tr>', html, re.S)
    assert row, f"no fleet table row for {agent_id}"
    cell = re.search(r'<td class="num backlog">(.*?)</td>', row.group(0), re.S)
    assert cell, f"no backlog cell in the row of {agent_id}"
    return cell.group(1)


def test_the_fleet_table_shows_each_agents_backlog_and_flags_a_deep_one(client, db):
    IngestWriter(db).write(
        [
            AgentStatus(agent_id="draining", state=AgentState.ONLINE, vitals=Vitals(outbox_depth=48213)),
            AgentStatus(agent_id="caught-up", state=AgentState.ONLINE, vitals=Vitals(outbox_depth=3)),
            AgentStatus(agent_id="at-threshold", state=AgentState.ONLINE, vitals=Vitals(outbox_depth=1000)),
        ]
    )
    login(client)
    html = client.get("/").data.decode()
    assert "<th" in html and ">Backlog</th>" in html
    assert 'data-backlog-rows="1000"' in html  # dashboard.js flags with the same threshold
    assert backlog_cell(html, "draining") == '48,213 <span class="flag">backlog</span>'
    assert backlog_cell(html, "caught-up") == "3"
    assert backlog_cell(html, "at-threshold") == "1,000"  # deeper than backlog_rows is a backlog
    assert client.get("/api/v1/agents").json["items"][0]["vitals"]["outbox_depth"] == 1000
    with client.get("/static/dashboard.js") as js:  # the 5 s refresh fills the same column
        assert b"outbox_depth" in js.data and b"backlogRows" in js.data


def test_an_agent_that_never_reported_vitals_shows_no_backlog(client, db):
    IngestWriter(db).write([make_result(agent_id="results-only")])  # registered by its first result
    login(client)
    assert backlog_cell(client.get("/").data.decode(), "results-only") == "—"


@pytest.mark.browser
def test_the_refresh_updates_the_backlog_column(app, db, page):
    writer = IngestWriter(db)
    writer.write([AgentStatus(agent_id="scope-9", state=AgentState.ONLINE, vitals=Vitals(outbox_depth=2))])
    violations = csp_violations(page)
    with serve_app(app) as url:
        page.goto(url + "/")
        browser_login(page)
        cell = page.locator("#agents tr", has_text="scope-9").locator("td.backlog")
        expect(cell).to_have_text("2")
        # the agent goes offline for a while and reports a deep outbox: the refresh shows it
        writer.write(
            [AgentStatus(agent_id="scope-9", state=AgentState.ONLINE, vitals=Vitals(outbox_depth=50000))]
        )
        expect(cell).to_have_text("50,000 backlog", timeout=15000)
        expect(cell.locator(".flag")).to_have_count(1)
    assert violations == []
