"""GET /api/v1/classifications with the explorer's filters (each, combined, paged by cursor) and
the /results explorer page."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.config import HubConfig
from hub.db.session import Database
from tests.hub.conftest import auth, login_as
from tests.hub.explorer_data import Seeded, seed
from tests.hub.review_fixtures import TWO, review_app


@pytest.fixture
def app(config: HubConfig) -> Any:
    from hub.app import close_app

    app = review_app(config, TWO)
    yield app
    close_app(app)


@pytest.fixture
def seeded(db: Database) -> Seeded:
    return seed(db)


def ids(client: FlaskClient, **params: Any) -> list[str]:
    """Every result id matching ``params``, following next_cursor 5 at a time."""
    out: list[str] = []
    query = {**params, "per_page": 5}
    for _ in range(100):
        r = client.get("/api/v1/classifications", query_string=query, headers=auth("trainer"))
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        out += [item["result_id"] for item in body["items"]]
        if body["next_cursor"] is None:
            return out
        query = {**params, "per_page": 5, "cursor": body["next_cursor"]}
    raise AssertionError("paging did not end")


def test_each_filter_keeps_exactly_its_results_paged_by_cursor(client, seeded):
    rs = seeded.results
    assert set(ids(client, lab="Lab A")) == seeded.ids(lab="Lab A")
    assert set(ids(client, agent_id="scope-1")) == seeded.ids(agent_id="scope-1")
    assert set(ids(client, specimen_id="SP-2")) == seeded.ids(specimen_id="SP-2")
    assert set(ids(client, label="AML")) == seeded.ids(label="AML")
    assert set(ids(client, model_name="leuko")) == seeded.ids(model_name="leuko")
    assert set(ids(client, model_version="2.0.0")) == seeded.ids(model_version="2.0.0")
    assert set(ids(client, model_name="other")) == set()
    flagged = {str(r.result_id) for r in rs if r.unfamiliar or r.low_confidence}
    assert 0 < len(flagged) < len(rs)
    assert set(ids(client, flagged="true")) == flagged
    assert set(ids(client, flagged="false")) == {str(r.result_id) for r in rs} - flagged
    assert ids(client, review_state="final") == [str(seeded.final)]
    assert ids(client, review_state="needs_second") == [str(seeded.needs_second)]
    assert ids(client, review_state="reviewed") == [str(seeded.reviewed)]
    assert len(ids(client, review_state="unreviewed")) == len(rs) - 3
    model_all = seeded.ids(label="ALL")
    assert set(ids(client, reviewed_label="ALL")) == model_all | {str(seeded.reviewed)}
    assert str(seeded.reviewed) not in model_all
    window = ids(client, since="2026-03-01T08:05:00Z", until="2026-03-01T08:10:00Z")
    assert window == [str(r.result_id) for r in reversed(rs[5:10])]


def test_filters_combine_and_pages_stay_newest_first(client, seeded):
    rs = seeded.results
    want = [
        str(r.result_id)
        for r in reversed(rs)
        if r.lab == "Lab A" and r.model_version == "1.0.0" and (r.unfamiliar or r.low_confidence)
    ]
    assert ids(client, lab="Lab A", model_version="1.0.0", flagged="true") == want
    unreviewed_b = [
        str(r.result_id)
        for r in reversed(rs)
        if r.lab == "Lab B"
        and r.agent_id == "scope-0"
        and r.result_id not in {seeded.final, seeded.reviewed}
        and r.result_id != seeded.needs_second
    ]
    assert ids(client, lab="Lab B", agent_id="scope-0", review_state="unreviewed") == unreviewed_b
    assert ids(client, reviewed_label="ALL", review_state="reviewed", lab="Lab B") == (
        [str(seeded.reviewed)] if rs[4].lab == "Lab B" else []
    )
    everything = ids(client)
    assert everything == [str(r.result_id) for r in reversed(rs)]


def test_total_counts_the_filtered_results(client, seeded):
    r = client.get(
        "/api/v1/classifications", query_string={"review_state": "unreviewed"}, headers=auth("trainer")
    )
    assert r.get_json()["total"] == len(seeded.results) - 3
    r = client.get("/api/v1/classifications", query_string={"lab": "Lab A"}, headers=auth("trainer"))
    assert r.get_json()["total"] == len(seeded.ids(lab="Lab A"))


def test_a_cursor_is_refused_with_other_filters_and_bad_values_are_named(client, seeded):
    first = client.get(
        "/api/v1/classifications", query_string={"lab": "Lab A", "per_page": 2}, headers=auth("trainer")
    ).get_json()
    r = client.get(
        "/api/v1/classifications",
        query_string={"lab": "Lab B", "per_page": 2, "cursor": first["next_cursor"]},
        headers=auth("trainer"),
    )
    assert r.status_code == 400 and "other filters" in r.get_json()["error"]["message"]
    r = client.get("/api/v1/classifications?review_state=done", headers=auth("trainer"))
    assert r.status_code == 400 and "review_state" in r.get_json()["error"]["message"]
    r = client.get("/api/v1/classifications?flagged=maybe", headers=auth("trainer"))
    assert r.status_code == 400 and "flagged" in r.get_json()["error"]["message"]


def test_older_cursors_stay_valid(client, seeded):
    """A cursor made before the explorer's filters (no new filter set) still pages."""
    from hub.api.classifications import ResultFilters

    assert ResultFilters(agent_id="a").fingerprint() == ResultFilters(agent_id="a", lab="").fingerprint()
    assert ResultFilters(agent_id="a").fingerprint() != ResultFilters(agent_id="a", lab="Lab A").fingerprint()


QUERY_KEYS = st.sampled_from(
    [
        "lab",
        "agent_id",
        "label",
        "reviewed_label",
        "review_state",
        "flagged",
        "unfamiliar",
        "model_name",
        "model_version",
        "specimen_id",
        "since",
        "until",
        "cursor",
        "per_page",
        "input_kind",
    ]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(QUERY_KEYS, st.text(max_size=300), max_size=6))
@pytest.mark.parametrize("path", ["/api/v1/classifications", "/api/v1/classifications.fhir"])
def test_hostile_query_strings_are_answered_never_a_server_error(client, seeded, path, params):
    r = client.get(path, query_string=params, headers=auth("trainer"))
    assert r.status_code < 500, (params, r.data[:300])
    if r.status_code >= 400:
        assert r.get_json()["error"]["message"]


def test_the_explorer_page_filters_and_links_the_exports(app: Flask, client: FlaskClient, seeded):
    login_as(app, client, "viewer")
    page = client.get("/results?lab=Lab+A&flagged=true&per_page=2")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    flagged_a = [
        r for r in reversed(seeded.results) if r.lab == "Lab A" and (r.unfamiliar or r.low_confidence)
    ]
    assert len(flagged_a) > 2
    for r in flagged_a[:2]:
        assert f"/results/{r.result_id}" in html
    assert f"/results/{flagged_a[2].result_id}" not in html
    assert "/api/v1/classifications.csv?" in html and "/api/v1/classifications.fhir?" in html
    assert "lab=Lab+A" in html and "flagged=true" in html
    assert "cursor=" in html  # the next page link
    bad = client.get("/results?review_state=nope")
    assert bad.status_code == 400 and "review_state" in bad.get_data(as_text=True)


def test_the_explorer_needs_a_session(client):
    r = client.get("/results")
    assert r.status_code == 302 and "/login" in r.headers["Location"]


def test_the_result_page_shows_the_evidence_image_with_its_boxes_to_reviewers_only(app, client, db):
    from tests.hub.review_fixtures import field_result, store
    from tests.hub.test_evidence import fetch, png, put, sha

    body = png(width=400, height=200, seed=7)
    result = field_result(image_sha256=sha(body))
    store(db, [result])
    reviewer, viewer = app.test_client(), app.test_client()
    login_as(app, reviewer, "reviewer")
    login_as(app, viewer, "viewer")
    before = reviewer.get(f"/results/{result.result_id}").get_data(as_text=True)
    assert "Image not received." in before and "evidence-svg" not in before
    assert put(client, sha(body), body).status_code == 201
    html = reviewer.get(f"/results/{result.result_id}").get_data(as_text=True)
    assert 'id="evidence-svg"' in html and 'viewBox="0 0 400 200"' in html
    assert f'href="/api/v1/evidence/{sha(body)}"' in html
    assert html.count('id="ebox-') == 3 and 'id="zoom-in"' in html and "zoom.js" in html
    assert "Image not received." not in html and 'id="field-svg"' not in html
    assert fetch(reviewer, sha(body)).data == body
    seen = viewer.get(f"/results/{result.result_id}").get_data(as_text=True)
    assert "Images are not shown to your role." in seen and "evidence-svg" not in seen
    assert 'id="field-svg"' in seen  # the boxes without the image


# --- PostgreSQL: 200,000 results, every explorer filter an index range read ------------------------

REVIEW_LOAD = """
INSERT INTO review_status (result_id, state, priority, captured_at, current_label, signed_by, version)
SELECT id,
    CASE WHEN id % 50 = 0 THEN 'final' WHEN id % 50 = 1 THEN 'reviewed' WHEN id % 200 = 2 THEN 'needs_second'
         ELSE 'unreviewed' END,
    3, captured_at, CASE WHEN id % 97 = 0 THEN 'AML' ELSE label END,
    CASE WHEN id % 50 = 0 THEN 'alice' END, 1
FROM classifications
"""
# one result in 20 of model 2.0.0, one in 40 unfamiliar (low_confidence: one in 10, from LOAD)
VARY = """
UPDATE classifications SET model_version = CASE WHEN id % 20 = 0 THEN '2.0.0' ELSE model_version END,
    unfamiliar = (id % 40 = 3), specimen_id = CASE WHEN id % 3 = 0 THEN 'SP-' || (id % 5000) END
"""


@pytest.fixture(scope="module")
def pg_results() -> Any:
    from sqlalchemy import text

    from hub.db.migrate import upgrade
    from tests.conftest import postgres_database
    from tests.integration.test_results_queries import LOAD, ROWS, T_END

    with postgres_database() as url:
        db = Database(url)
        try:
            upgrade(db)
            with db.engine.begin() as conn:
                conn.execute(text("DELETE FROM review_status"))
                conn.execute(text(LOAD), {"n": ROWS, "t_end": T_END})
                conn.execute(text(VARY))
                conn.execute(text(REVIEW_LOAD))
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE classifications"))
                conn.execute(text("VACUUM ANALYZE review_status"))
            yield db
        finally:
            db.dispose()


@pytest.mark.integration
def test_explorer_filters_on_postgresql_are_index_range_reads(pg_results):
    from datetime import timedelta

    from hub.api.classifications import Cursor, ResultFilters, export_query, page_query
    from hub.review.policy import State
    from tests.integration.test_results_queries import MIDDLE, T_END, check_plan

    F = ResultFilters
    since, until = T_END - timedelta(days=40), T_END - timedelta(days=20)
    lab, model, flagged = (
        "ix_classifications_lab_captured_id",
        "ix_classifications_model_captured_id",
        "ix_classifications_flagged_captured_id",
    )
    state, reviewed = "ix_review_status_state_captured", "ix_review_status_label_captured"
    captured = "ix_classifications_captured_id"
    cases: dict[str, tuple[ResultFilters, set[str], bool]] = {
        "lab": (F(lab="Lab 3"), {lab, captured}, True),
        "lab+since+until": (F(lab="Lab 3", since=since, until=until), {lab, captured}, True),
        "model version (5%)": (F(model_name="leuko", model_version="2.0.0"), {model}, True),
        "flagged": (F(flagged=True), {flagged}, True),
        "flagged+since": (F(flagged=True, since=since), {flagged}, True),
        "specimen": (F(specimen_id="SP-42"), {"ix_classifications_specimen_captured_id"}, False),
        "review final (2%)": (F(review_state=State.FINAL), {state}, True),
        "review needs_second": (F(review_state=State.NEEDS_SECOND, until=until), {state}, True),
        "reviewed label AML": (F(reviewed_label="AML"), {reviewed}, True),
        "lab+flagged": (F(lab="Lab 1", flagged=True), {lab, flagged}, False),
        "final+lab": (F(review_state=State.FINAL, lab="Lab 2"), {state}, False),
    }
    print()
    for what, (filters, indexes, ordered) in cases.items():
        check_plan(
            pg_results, f"{what}: first", page_query(filters, limit=51), indexes, sorted_by_index=ordered
        )
        after = Cursor(MIDDLE.captured_at, MIDDLE.id, filters.fingerprint())
        stmt = page_query(filters, limit=51, after=after)
        check_plan(pg_results, f"{what}: cursor", stmt, indexes, sorted_by_index=ordered)
        check_plan(
            pg_results,
            f"{what}: export",
            export_query(filters, after=after).limit(1001),
            indexes,
            sorted_by_index=ordered,
        )


@pytest.mark.integration
def test_explorer_keyset_pages_on_postgresql_hold_exactly_the_matching_rows(pg_results):
    from datetime import timedelta

    from sqlalchemy import select

    from hub.api.classifications import Cursor, ResultFilters, page_query
    from hub.db.models import Classification
    from hub.db.review_models import ReviewStatus
    from hub.review.policy import State
    from tests.integration.test_results_queries import T_END

    window = {"since": T_END - timedelta(days=3), "until": T_END - timedelta(days=1)}
    for filters in (
        ResultFilters(lab="Lab 2", flagged=True, **window),
        ResultFilters(review_state=State.FINAL, model_version="1.0.0", **window),
        ResultFilters(reviewed_label="AML", **window),
    ):
        with pg_results.session() as s:
            rows = s.execute(
                select(
                    Classification.captured_at,
                    Classification.id,
                    Classification.lab,
                    Classification.unfamiliar,
                    Classification.low_confidence,
                    Classification.model_version,
                    ReviewStatus.state,
                    ReviewStatus.current_label,
                )
                .join(ReviewStatus, ReviewStatus.result_id == Classification.id)
                .where(
                    Classification.captured_at >= window["since"],
                    Classification.captured_at < window["until"],
                )
            ).all()
            want = [
                r.id
                for r in sorted(rows, key=lambda r: (r.captured_at, r.id), reverse=True)
                if (filters.lab is None or r.lab == filters.lab)
                and (filters.flagged is None or (r.unfamiliar or r.low_confidence))
                and (filters.review_state is None or r.state == filters.review_state.value)
                and (filters.model_version is None or r.model_version == filters.model_version)
                and (filters.reviewed_label is None or r.current_label == filters.reviewed_label)
            ]
            got: list[int] = []
            after = None
            for _ in range(10_000):
                page = s.scalars(page_query(filters, limit=7, after=after)).all()
                got += [c.id for c in page]
                if len(page) < 7:
                    break
                after = Cursor(page[-1].captured_at, page[-1].id, filters.fingerprint())
        assert want and got == want, filters


def test_0010_adds_the_explorer_indexes_and_downgrades(tmp_path):
    from alembic import command
    from sqlalchemy import inspect

    from hub.db.migrate import alembic_config, upgrade

    def names(db: Database) -> set[str]:
        found = inspect(db.engine)
        return {i["name"] for table in ("classifications", "review_status") for i in found.get_indexes(table)}

    new = {
        "ix_classifications_lab_captured_id",
        "ix_classifications_model_captured_id",
        "ix_classifications_flagged_captured_id",
        "ix_review_status_state_captured",
        "ix_review_status_label_captured",
    }
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        upgrade(db, "0009")
        before = names(db)
        assert not before & new
        upgrade(db, "0010")
        assert names(db) == before | new
        cfg = alembic_config()
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0009")
        assert names(db) == before
    finally:
        db.dispose()
