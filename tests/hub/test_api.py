"""REST API: authentication and roles, error shape, agents, classifications (pagination, filters)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest

from hub.ingest.writer import IngestWriter
from shared.schemas import AgentState, AgentStatus
from tests.hub.conftest import auth, make_result

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def test_healthz_is_open(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json["status"] == "ok" and r.json["database"] == "ok"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models",
        "/api/v1/agents",
        "/api/v1/classifications",
        "/api/v1/ingest/stats",
        "/api/v1/models/x/1.0.0/bundle",
    ],
)
def test_api_needs_a_token(client, path):
    r = client.get(path)
    assert r.status_code == 401
    assert r.json["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(path, headers={"Authorization": "Bearer not-a-real-token-xxxx"}).status_code == 401
    assert client.get(path, headers={"Authorization": "Basic abc"}).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "role", "status"),
    [
        ("GET", "/api/v1/agents", "agent", 403),
        ("GET", "/api/v1/agents", "trainer", 200),
        ("GET", "/api/v1/classifications", "agent", 403),
        ("GET", "/api/v1/models", "agent", 200),
        ("GET", "/api/v1/ingest/stats", "agent", 403),
        ("GET", "/api/v1/ingest/stats", "trainer", 200),
        ("GET", "/api/v1/ingest/stats", "admin", 200),
        ("POST", "/api/v1/models", "agent", 403),
        ("PUT", "/api/v1/agents/a1/desired", "trainer", 403),
        ("GET", "/api/v1/models/x/1.0.0/bundle", "trainer", 403),
    ],
)
def test_roles(client, method, path, role, status):
    r = client.open(path, method=method, headers=auth(role))
    assert r.status_code == status, r.json
    if status == 403:
        assert r.json["error"]["code"] == "forbidden"
        assert role in r.json["error"]["message"]


def test_unknown_api_route_is_json_404(client):
    r = client.get("/api/v1/nope", headers=auth("admin"))
    assert r.status_code == 404
    assert r.json["error"]["code"] == "not_found"


def _seed(db, n_per_agent=30):
    writer = IngestWriter(db)
    msgs = []
    for i in range(n_per_agent):
        for agent, label in (("scope-1", "ALL"), ("scope-2", "normal")):
            msgs.append(make_result(agent_id=agent, label=label, captured_at=T0 + timedelta(minutes=i)))
    writer.write(msgs)
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
    return msgs


def test_classifications_pagination_and_order(client, db):
    _seed(db)
    r = client.get("/api/v1/classifications?per_page=25&page=1", headers=auth("trainer"))
    assert r.status_code == 200
    body = r.json
    assert (body["total"], body["page"], body["per_page"], len(body["items"])) == (60, 1, 25, 25)
    times = [i["captured_at"] for i in body["items"]]
    assert times == sorted(times, reverse=True)
    last = client.get("/api/v1/classifications?per_page=25&page=3", headers=auth("trainer")).json
    assert len(last["items"]) == 10
    ids = {
        i["result_id"]
        for p in (1, 2, 3)
        for i in client.get(f"/api/v1/classifications?per_page=25&page={p}", headers=auth("admin")).json[
            "items"
        ]
    }
    assert len(ids) == 60
    item = body["items"][0]
    for key in (
        "result_id",
        "agent_id",
        "image_name",
        "label",
        "confidence",
        "probabilities",
        "model_version",
        "captured_at",
        "low_confidence",
    ):
        assert key in item


def test_classifications_filters(client, db):
    _seed(db)
    h = auth("admin")
    r = client.get("/api/v1/classifications?agent_id=scope-2&per_page=500", headers=h).json
    assert r["total"] == 30 and {i["agent_id"] for i in r["items"]} == {"scope-2"}
    r = client.get("/api/v1/classifications?label=ALL", headers=h).json
    assert r["total"] == 30 and {i["label"] for i in r["items"]} == {"ALL"}
    since = (T0 + timedelta(minutes=10)).isoformat().replace("+00:00", "Z")
    until = (T0 + timedelta(minutes=20)).isoformat()
    r = client.get("/api/v1/classifications", query_string={"since": since, "until": until}, headers=h).json
    assert r["total"] == 20  # minutes 10..19 for both agents, until exclusive


@pytest.mark.parametrize("query", ["per_page=501", "per_page=0", "page=0", "page=x", "since=yesterday"])
def test_classifications_bad_parameters(client, query):
    r = client.get(f"/api/v1/classifications?{query}", headers=auth("admin"))
    assert r.status_code == 400
    assert r.json["error"]["code"] == "invalid_parameter"


def _walk(client, query: str, per_page: int) -> list[dict]:
    """Every page by next_cursor from the newest; each cursor page has no total and no page number."""
    h = auth("admin")
    body = client.get(f"/api/v1/classifications?per_page={per_page}&{query}", headers=h).json
    pages = [body]
    while body["next_cursor"] is not None:
        r = client.get(
            f"/api/v1/classifications?per_page={per_page}&{query}&cursor={body['next_cursor']}", headers=h
        )
        assert r.status_code == 200, r.json
        body = r.json
        assert (body["total"], body["page"]) == (None, None)
        pages.append(body)
    assert all(len(p["items"]) == per_page for p in pages[:-1]) and 0 < len(pages[-1]["items"]) <= per_page
    return [i for p in pages for i in p["items"]]


def test_classifications_cursor_pages_cover_every_row_once_newest_first(client, db):
    _seed(db)  # both agents report at the same minutes: 30 ties on captured_at, broken by id
    first = client.get("/api/v1/classifications?per_page=7", headers=auth("admin")).json
    assert (first["total"], first["page"], len(first["items"])) == (60, 1, 7)
    items = _walk(client, "", 7)
    assert len(items) == 60 and len({i["result_id"] for i in items}) == 60
    times = [i["captured_at"] for i in items]
    assert times == sorted(times, reverse=True)
    # the same rows, in the same order, as the offset pages older clients ask for
    by_page = [
        i["result_id"]
        for p in (1, 2, 3)
        for i in client.get(f"/api/v1/classifications?per_page=25&page={p}", headers=auth("admin")).json[
            "items"
        ]
    ]
    assert [i["result_id"] for i in items] == by_page


def test_classifications_cursor_keeps_the_filters(client, db):
    _seed(db)
    items = _walk(client, "agent_id=scope-2", 7)
    assert len(items) == 30 and {i["agent_id"] for i in items} == {"scope-2"}
    since = (T0 + timedelta(minutes=10)).isoformat()
    items = _walk(client, f"label=ALL&since={since.replace('+', '%2B')}", 3)
    assert len(items) == 20 and {i["label"] for i in items} == {"ALL"}
    assert min(i["captured_at"] for i in items) == since


def test_count_false_skips_the_total(client, db):
    _seed(db)
    h = auth("admin")
    body = client.get("/api/v1/classifications?per_page=5&agent_id=scope-1&count=false", headers=h).json
    assert (body["total"], body["page"], len(body["items"])) == (None, 1, 5) and body["next_cursor"]
    assert client.get("/api/v1/classifications?count=true", headers=h).json["total"] == 60


def test_a_cursor_page_does_not_shift_when_newer_results_arrive(client, db):
    _seed(db)
    h = auth("admin")
    expected = [i["result_id"] for i in _walk(client, "", 10)][10:20]
    first = client.get("/api/v1/classifications?per_page=10", headers=h).json
    IngestWriter(db).write([make_result(captured_at=T0 + timedelta(hours=5)) for _ in range(4)])
    second = client.get(f"/api/v1/classifications?per_page=10&cursor={first['next_cursor']}", headers=h).json
    assert [i["result_id"] for i in second["items"]] == expected
    # an offset page does shift: the four new rows push four old ones onto page 2
    shifted = client.get("/api/v1/classifications?per_page=10&page=2", headers=h).json
    assert [i["result_id"] for i in shifted["items"]] != expected


def test_an_offset_page_hands_over_to_the_cursor(client, db):
    _seed(db)
    h = auth("admin")
    page2 = client.get("/api/v1/classifications?per_page=10&page=2", headers=h).json
    page3 = client.get("/api/v1/classifications?per_page=10&page=3", headers=h).json
    after = client.get(f"/api/v1/classifications?per_page=10&cursor={page2['next_cursor']}", headers=h).json
    assert after["items"] == page3["items"]
    last = client.get("/api/v1/classifications?per_page=10&page=6", headers=h).json
    assert len(last["items"]) == 10 and last["next_cursor"] is None


def test_a_cursor_is_refused_with_other_filters_or_a_page(client, db):
    _seed(db)
    h = auth("admin")
    cursor = client.get("/api/v1/classifications?per_page=5&agent_id=scope-1", headers=h).json["next_cursor"]
    for query in (
        f"cursor={cursor}",
        f"cursor={cursor}&agent_id=scope-2",
        f"cursor={cursor}&agent_id=scope-1&label=ALL",
    ):
        r = client.get(f"/api/v1/classifications?{query}", headers=h)
        assert r.status_code == 400 and "other filters" in r.json["error"]["message"], query
    r = client.get(f"/api/v1/classifications?cursor={cursor}&agent_id=scope-1&page=2", headers=h)
    assert r.status_code == 400 and "page and cursor" in r.json["error"]["message"]
    assert (
        client.get(f"/api/v1/classifications?cursor={cursor}&agent_id=scope-1", headers=h).status_code == 200
    )


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",
        "!!!!",
        _b64("not json"),
        _b64("[1, 2]"),
        _b64('["2026-01-01T12:00:00+00:00", "7", "0123456789abcdef"]'),
        _b64('["2026-01-01T12:00:00", 7, "0123456789abcdef"]'),  # no offset
        _b64('["2026-01-01T12:00:00+00:00", true, "0123456789abcdef"]'),
        _b64('["2026-01-01T12:00:00+00:00", 0, "0123456789abcdef"]'),
        _b64('["2026-01-01T12:00:00+00:00", 7, "short"]'),
        _b64('["2026-01-01T12:00:00+00:00", 2147483648, "0123456789abcdef"]'),  # over INTEGER
        _b64('["0001-01-01T00:00:00+01:00", 7, "0123456789abcdef"]'),  # before year 1 in UTC
        "x" * 300,
    ],
)
def test_a_cursor_the_hub_did_not_issue_is_400_naming_it(client, cursor):
    r = client.get("/api/v1/classifications", query_string={"cursor": cursor}, headers=auth("admin"))
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "invalid_parameter" and r.json["error"]["message"].startswith("cursor")


def test_agents_list_and_show(client, db):
    _seed(db, n_per_agent=2)
    items = client.get("/api/v1/agents", headers=auth("admin")).json["items"]
    assert [a["agent_id"] for a in items] == ["scope-1", "scope-2"]
    one = client.get("/api/v1/agents/scope-1", headers=auth("admin")).json
    assert (one["state"], one["model_version"], one["lab"], one["device"]) == (
        "online",
        "1.0.0",
        "Lab A",
        "CPU",
    )
    assert one["last_seen"] is not None
    for key in ("desired_model_name", "desired_model_version", "vitals"):
        assert key in one
    r = client.get("/api/v1/agents/ghost", headers=auth("admin"))
    assert r.status_code == 404 and r.json["error"]["code"] == "agent_not_found"


def test_ingest_stats_without_worker(client):
    assert client.get("/api/v1/ingest/stats", headers=auth("admin")).json["running"] is False


def test_desired_validates_input(client):
    h = auth("admin")
    assert client.put("/api/v1/agents/bad id!/desired", json={}, headers=h).status_code == 400
    r = client.put("/api/v1/agents/a1/desired", data="nope", headers=h)
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_body"
    r = client.put("/api/v1/agents/a1/desired", json={"model_name": "x"}, headers=h)
    assert r.status_code == 422
    r = client.put("/api/v1/agents/a1/desired", json={"model_name": "x", "model_version": "9.9.9"}, headers=h)
    assert r.status_code == 404 and r.json["error"]["code"] == "model_not_found"
