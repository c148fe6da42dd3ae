"""Dashboard: login with the password, the page lists agents and results, user data is escaped."""

from __future__ import annotations

from hub.ingest.writer import IngestWriter
from shared.schemas import AgentState, AgentStatus
from tests.hub.conftest import DASHBOARD_PASSWORD, make_result


def login(client, password=DASHBOARD_PASSWORD):
    return client.post("/login", data={"password": password})


def test_index_redirects_to_login(client):
    r = client.get("/")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.get("/login").status_code == 200


def test_wrong_password_is_refused(client):
    r = login(client, "nope")
    assert r.status_code == 401 and b"Wrong password" in r.data
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
    r = client.post("/login?next=//evil.example/x", data={"password": DASHBOARD_PASSWORD})
    assert r.status_code == 302 and "evil.example" not in r.headers["Location"]
    assert client.get("/").status_code == 200
    client.post("/logout")
    assert client.get("/").status_code == 302
