"""The review API: who may read and act (a viewer cannot review; actions are a person's), the
queue with its cursor, review and sign-off with their refusals (404, 409, 422, 400), the two-person
rule, per-cell review, the OpenAPI operations, and hostile payloads (hypothesis)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate

from hub.app import close_app
from hub.config import HubConfig
from hub.extensions import hub_ext
from hub.identity.tokens import create_token
from hub.identity.users import find_user
from hub.review.schemas import QueuePage, ReviewOut
from hub.roles import Role
from shared.clock import utcnow
from shared.schemas import ClassificationResult
from tests.hub.conftest import add_user, auth
from tests.hub.review_fixtures import TWO, field_result, kinds, review_app, store

READERS = ["admin", "viewer", "reviewer", "operator", "trainer"]


@pytest.fixture
def app(config: HubConfig) -> Iterator[Flask]:
    application = review_app(config)
    try:
        yield application
    finally:
        close_app(application)


def person(app: Flask, username: str, role: str) -> dict[str, str]:
    """Headers with a personal API token of a new user ``username`` with ``role``."""
    add_user(app, username, role)
    with hub_ext.for_app(app).db.transaction() as s:
        user = find_user(s, username)
        assert user is not None
        token = create_token(
            s, name=f"{username}-token", role=Role(role), actor="test", now=utcnow(), user_id=user.id
        )
    return {"Authorization": f"Bearer {token.value}"}


def service_token(app: Flask, role: str) -> dict[str, str]:
    with hub_ext.for_app(app).db.transaction() as s:
        token = create_token(s, name=f"{role}-service", role=Role(role), actor="test", now=utcnow())
    return {"Authorization": f"Bearer {token.value}"}


@pytest.fixture
def results(app: Flask, db: Any) -> dict[str, ClassificationResult]:
    stored = kinds()
    stored["field"] = field_result()
    store(db, list(stored.values()))
    return stored


@pytest.fixture
def alice(app: Flask) -> dict[str, str]:
    return person(app, "alice", "reviewer")


@pytest.fixture
def bob(app: Flask) -> dict[str, str]:
    return person(app, "bob", "reviewer")


def get_review(client: FlaskClient, result_id: uuid.UUID, headers: dict[str, str]) -> dict[str, Any]:
    r = client.get(f"/api/v1/classifications/{result_id}/review", headers=headers)
    assert r.status_code == 200, r.json
    ReviewOut.model_validate(r.json)  # the documented shape
    return dict(r.json)


def post(
    client: FlaskClient, result_id: uuid.UUID, headers: dict[str, str], what: str = "review", **body: Any
) -> Any:
    if "version" not in body:
        body["version"] = get_review(client, result_id, headers)["version"]
    return client.post(f"/api/v1/classifications/{result_id}/{what}", json=body, headers=headers)


# --- roles ---------------------------------------------------------------------------------------


def test_every_reader_reads_the_queue_and_reviews_but_agents_and_strangers_do_not(app, client, results):
    rid = results["positive"].result_id
    for role in ("viewer", "operator", "reviewer"):
        headers = person(app, f"{role}-1", role)
        assert client.get("/api/v1/review/queue", headers=headers).status_code == 200, role
        review = get_review(client, rid, headers)
        assert review["can_sign"] is False
        if role == "reviewer":
            assert "a positive result needs a review" in review["sign_blocker"]
        else:
            assert review["sign_blocker"] == "your role may not sign results"
    assert client.get("/api/v1/review/queue", headers=auth("trainer")).status_code == 200
    assert client.get("/api/v1/review/queue", headers=auth("agent")).status_code == 403
    assert client.get("/api/v1/review/queue").status_code == 401


def test_a_viewer_cannot_review_and_a_service_token_is_no_person(app, client, results):
    rid = results["negative"].result_id
    viewer = person(app, "vera", "viewer")
    for what, body in (("review", {"action": "confirm", "version": 1}), ("sign", {"version": 1})):
        r = client.post(f"/api/v1/classifications/{rid}/{what}", json=body, headers=viewer)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden", r.json
        assert "needs one of: admin, reviewer" in r.json["error"]["message"]
        for headers in (service_token(app, "reviewer"), auth("admin")):
            r = client.post(f"/api/v1/classifications/{rid}/{what}", json=body, headers=headers)
            assert r.status_code == 403 and r.json["error"]["code"] == "person_required", r.json
            assert "personal API token" in r.json["error"]["message"]
    review = get_review(client, rid, viewer)
    assert (review["state"], review["version"], review["history"]) == ("unreviewed", 1, [])
    review = get_review(client, rid, service_token(app, "reviewer"))
    assert review["sign_blocker"] == "a service token may not sign results: use a personal API token"
    admin = person(app, "ada", "admin")  # an admin is a reviewer too
    assert post(client, rid, admin, "sign").json["state"] == "final"


# --- review and sign-off -------------------------------------------------------------------------


def test_confirm_then_sign_a_positive_and_read_the_trail(client, results, alice, bob):
    rid = results["positive"].result_id
    r = post(client, rid, alice, "sign")
    assert r.status_code == 409 and r.json["error"]["code"] == "cannot_sign"
    assert r.json["error"]["message"] == (
        "not signed: a positive result needs a review before sign-off: confirm or reclassify it first"
    )
    r = post(client, rid, bob, action="confirm", comment="blasts, agree")
    assert r.status_code == 200, r.json
    review = ReviewOut.model_validate(r.json)
    assert (review.state, review.reviewed_by, review.version, review.can_sign) == ("reviewed", "bob", 2, True)
    assert review.labels == ["ALL", "normal", "unsure", "other"]
    r = post(client, rid, alice, "sign", comment="reported")
    assert r.status_code == 200 and r.json["state"] == "final" and r.json["signed_by"] == "alice"
    history = r.json["history"]
    assert [(h["action"], h["username"], h["role"], h["from_state"], h["to_state"]) for h in history] == [
        ("confirm", "bob", "reviewer", "unreviewed", "reviewed"),
        ("sign", "alice", "reviewer", "reviewed", "final"),
    ]
    assert history[0]["comment"] == "blasts, agree" and history[1]["comment"] == "reported"
    assert r.json["can_sign"] is False and r.json["sign_blocker"] == "already final: signed by alice"


def test_refusals_name_the_problem(client, results, alice):
    rid = results["positive"].result_id
    r = post(client, uuid.uuid4(), alice, version=1, action="confirm")
    assert r.status_code == 404 and r.json["error"]["code"] == "result_not_found"
    body = {"action": "confirm", "version": 1}
    r = client.post("/api/v1/classifications/not-a-uuid/review", json=body, headers=alice)
    assert r.status_code == 400 and r.json["error"]["message"].startswith("result_id must be a result's UUID")
    r = post(client, rid, alice, action="reclassify", label="AML")
    assert r.status_code == 422 and r.json["error"]["code"] == "unknown_label"
    assert "choose one of: ALL, normal, unsure, other" in r.json["error"]["message"]
    r = post(client, rid, alice, action="comment", comment="x" * 2001)
    assert r.status_code == 422 and "comment" in r.json["error"]["message"]
    r = post(client, rid, alice, action="approve")
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_body"
    assert post(client, rid, alice, action="confirm").status_code == 200
    r = post(client, rid, alice, version=1, action="reclassify", label="normal")  # a stale form
    assert r.status_code == 409 and r.json["error"]["code"] == "stale_version"
    assert "your version 1, now 2, last changed by alice" in r.json["error"]["message"]
    assert get_review(client, rid, alice)["current_label"] == "ALL"


def test_two_person_rule_through_the_api(tmp_path, keys, config):
    app = review_app(config, TWO)
    try:
        client = app.test_client()
        alice, bob = person(app, "alice", "reviewer"), person(app, "bob", "reviewer")
        stored = kinds()
        store(hub_ext.for_app(app).db, list(stored.values()))
        rid = stored["positive"].result_id
        assert post(client, rid, alice, action="confirm").status_code == 200
        r = post(client, rid, alice, "sign")
        assert r.json["state"] == "needs_second" and r.json["two_person_rule"] is True
        review = get_review(client, rid, alice)
        assert review["can_sign"] is False and "you signed first" in review["sign_blocker"]
        r = post(client, rid, alice, "sign")
        assert r.status_code == 409 and "a different reviewer must sign second" in r.json["error"]["message"]
        assert get_review(client, rid, bob)["can_sign"] is True
        r = post(client, rid, bob, "sign")
        assert r.status_code == 200, r.json
        assert (r.json["state"], r.json["signed_by"], r.json["second_signed_by"]) == ("final", "alice", "bob")
        assert [h["action"] for h in r.json["history"]] == ["confirm", "sign", "second_sign"]
    finally:
        close_app(app)


def test_a_cell_is_reclassified_through_the_api(client, results, alice):
    rid = results["field"].result_id
    r = post(client, rid, alice, action="reclassify", label="normal", cell_index=1)
    assert r.status_code == 200, r.json
    assert r.json["cells"] == [{"cell_index": 1, "model_label": "ALL", "current_label": "normal"}]
    assert (r.json["current_label"], r.json["state"]) == ("ALL", "unreviewed")
    assert r.json["history"][0]["cell_index"] == 1
    r = post(client, rid, alice, action="reclassify", label="normal", cell_index=7)
    assert r.status_code == 422 and "this result has 3 cells" in r.json["error"]["message"]
    r = post(client, rid, alice, action="confirm", cell_index=256)
    assert r.status_code == 422 and r.json["error"]["code"] == "invalid_body"


# --- the queue -----------------------------------------------------------------------------------


def test_queue_pages_by_cursor_in_urgency_order(client, results, alice, db):
    def page(**query: Any) -> dict[str, Any]:
        r = client.get("/api/v1/review/queue", query_string=query, headers=alice)
        assert r.status_code == 200, r.json
        QueuePage.model_validate(r.json)
        return dict(r.json)

    first = page(limit=2)
    assert [i["priority"] for i in first["items"]] == ["flagged", "positive"]
    second = page(limit=2, cursor=first["next_cursor"])
    third = page(limit=2, cursor=second["next_cursor"])
    assert third["next_cursor"] is None
    ids = [i["result_id"] for p in (first, second, third) for i in p["items"]]
    assert ids == [i["result_id"] for i in page(limit=200)["items"]] and len(ids) == 5
    field = next(i for p in (first, second) for i in p["items"] if i["input_kind"] == "field")
    assert field["cell_counts"] == {"ALL": 1, "normal": 2} and field["priority"] == "positive"
    assert page(view="final")["items"] == []
    for query, where in (
        ({"cursor": "nonsense"}, "cursor is not a cursor"),
        ({"cursor": first["next_cursor"], "view": "final"}, "cursor is not a cursor of this queue view"),
        ({"view": "done"}, "view must be one of"),
        ({"limit": "201"}, "limit"),
    ):
        r = client.get("/api/v1/review/queue", query_string=query, headers=alice)
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_parameter", query
        assert r.json["error"]["message"].startswith(where), r.json


def test_the_review_operations_are_documented_with_their_roles(client):
    doc = client.get("/api/v1/openapi.json").json
    validate(doc)
    paths = doc["paths"]
    assert paths["/api/v1/review/queue"]["get"]["x-roles"] == READERS
    assert paths["/api/v1/classifications/{result_id}/review"]["get"]["x-roles"] == READERS
    for path in ("/api/v1/classifications/{result_id}/review", "/api/v1/classifications/{result_id}/sign"):
        op = paths[path]["post"]
        assert op["x-roles"] == ["admin", "reviewer"]
        assert {"400", "401", "403", "404", "409", "413", "422"} <= set(op["responses"])
        assert (
            op["parameters"][0]["name"] == "result_id" and op["parameters"][0]["schema"]["format"] == "uuid"
        )


# --- hostile payloads ------------------------------------------------------------------------------

LABELS = ["ALL", "normal", "unsure", "other"]
payloads = st.fixed_dictionaries(
    {
        "action": st.sampled_from(["confirm", "reclassify", "comment", "sign", ""]),
        "version": st.integers(min_value=-1, max_value=4),
    },
    optional={
        "label": st.one_of(st.none(), st.sampled_from(LABELS), st.text(max_size=70)),
        "comment": st.one_of(st.text(max_size=30), st.text(min_size=1995, max_size=2010)),
        "cell_index": st.one_of(st.none(), st.integers(min_value=-2, max_value=300)),
        "extra": st.integers(),
    },
)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(body=payloads)
def test_hostile_review_payloads_are_refused_or_recorded_never_a_server_error(client, results, alice, body):
    rid = results["field"].result_id
    before = get_review(client, rid, alice)
    r = client.post(f"/api/v1/classifications/{rid}/review", json=body, headers=alice)
    after = get_review(client, rid, alice)
    comment, label = body.get("comment", ""), body.get("label")
    assert r.status_code in (200, 400, 409, 422), (body, r.status_code, r.json)
    if any("\x00" in v for v in body.values() if isinstance(v, str)):
        assert r.status_code == 400 and "NUL" in r.json["error"]["message"]  # PostgreSQL refuses NUL
    elif len(comment) > 2000 or "extra" in body or body["action"] not in ("confirm", "reclassify", "comment"):
        assert r.status_code == 422 and r.json["error"]["code"] == "invalid_body"
    if body["action"] == "reclassify" and body.get("cell_index") is None and label not in (None, *LABELS):
        assert r.status_code in (400, 422)  # a label the result does not have is never stored
    if r.status_code == 200:
        assert after["version"] == before["version"] + 1 == body["version"] + 1
        assert len(after["history"]) == len(before["history"]) + 1
        assert after["history"][-1]["comment"] == comment
    else:
        assert after == before, (body, r.json)  # a refused action leaves no trace
