"""The OpenAPI document of /api/v1 (valid, complete, served with its page), schemathesis against every
operation in-process, and hostile input: deep nesting, bad integers, NUL characters (SQLite and
PostgreSQL)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from pydantic import BaseModel
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from hub.api.openapi import UndocumentedRoute, build_spec, documented
from hub.api.params import parse_body
from hub.api.rollouts import ActionBody
from hub.app import close_app, create_app
from hub.ingest.stats import IngestStats
from hub.ingest.writer import IngestWriter
from hub.services import build_services
from shared.schemas import ModelEventKind
from tests.hub.conftest import Env, auth, hub_config, make_result, migrated_app
from tests.hub.test_training_jobs import SPEC

API_PREFIX = "/api/v1/"
DOC = "/api/v1/openapi.json"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15  # per operation and generation mode (valid, invalid); derandomized: same cases each run
# Generated examples and requests per operation, and the statuses, tallied by the schemathesis test.
EXAMPLES: Counter[str] = Counter()
REQUESTS: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()


def _operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def _api_rules(app: Flask) -> set[tuple[str, str]]:
    """Every (method, path) of the app under /api/v1 except the document itself, as OpenAPI paths."""
    out = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIX) and rule.rule != DOC:
            path = re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)
            out |= {(m, path) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    return out


# --- the document and the page ------------------------------------------------------------------


def test_document_is_valid_openapi_and_documents_every_api_route(app, client):
    r = client.get(DOC)  # no token: documentation, like /healthz
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.json
    validate(doc)  # raises on anything the OpenAPI 3.1 schema refuses
    assert doc["openapi"] == "3.1.0"
    assert _operations(doc) == _api_rules(app)
    assert len(_operations(doc)) >= 29
    error = {"$ref": "#/components/schemas/Error"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op["summary"], where
            if path == "/api/v1/enroll":  # the one public operation: the body carries its token
                assert op["x-roles"] == [] and op["security"] == [], where
                assert "Roles: none (public)" in op["description"], where
                continue
            assert "admin" in op["x-roles"], where
            assert "Roles: admin" in op["description"], where
            for status in ("401", "403"):
                assert op["responses"][status]["content"]["application/json"]["schema"] == error, where
            templated = set(re.findall(r"{([^}]+)}", path))
            assert templated == {p["name"] for p in op["parameters"] if p["in"] == "path"}, where
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["components"]["schemas"]["Error"]["properties"]["error"] == {
        "$ref": "#/components/schemas/ErrorDetail"
    }


def test_roles_in_the_document_are_those_enforced(client):
    doc = client.get(DOC).json
    readers = ["admin", "viewer", "reviewer", "operator", "trainer"]
    assert doc["paths"]["/api/v1/agents"]["get"]["x-roles"] == readers
    assert doc["paths"]["/api/v1/models/{name}/{version}/bundle"]["get"]["x-roles"] == ["admin", "agent"]
    assert doc["paths"]["/api/v1/agents/{agent_id}/desired"]["put"]["x-roles"] == ["admin", "operator"]
    r = client.put("/api/v1/agents/a1/desired", json={}, headers=auth("trainer"))
    assert r.status_code == 403


def test_an_undocumented_api_route_fails_the_build(app):
    app.add_url_rule("/api/v1/extra", endpoint="api.extra", view_func=lambda: {})
    with pytest.raises(UndocumentedRoute, match="/api/v1/extra"):
        build_spec(app)
    assert app.test_client().get(DOC).status_code == 500


class Undocumented(BaseModel):
    reason: str = ""


def test_a_route_must_parse_the_body_it_documents(app):
    @documented(body=ActionBody, responses={200: None})
    def mismatched() -> dict[str, Any]:
        parse_body(Undocumented)  # the document would say ActionBody: refused as a programming error
        return {}

    app.add_url_rule("/api/v1/mismatched", endpoint="api.mismatched", view_func=mismatched, methods=["POST"])
    r = app.test_client().post("/api/v1/mismatched", json={}, headers=auth("admin"))
    assert r.status_code == 500 and r.json["error"]["code"] == "internal_error"


def test_docs_page_lists_every_operation_without_script(client):
    doc = client.get(DOC).json
    r = client.get("/api/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    for item in doc["paths"].values():
        for op in item.values():
            assert f'id="op-{op["operationId"]}"' in html
    assert "<code>PUT /api/v1/agents/{agent_id}/desired</code>" in html
    assert '<a href="#schema-DesiredBody">DesiredBody</a>' in html and 'id="schema-DesiredModel"' in html
    assert "admin, trainer" in html and "<code>limit</code> (query, integer)" in html
    assert "<script" not in html and "style=" not in html and "//cdn" not in html


# --- hostile input ------------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PUT", "/api/v1/agents/x/desired", _nested(20_000)),
        ("PUT", "/api/v1/agents/x/desired", '{"model_name": ' + _nested(20_000) + ', "model_version": "1"}'),
        ("POST", "/api/v1/rollouts", '{"target": {"agents": ' + _nested(20_000) + "}}"),
        ("POST", "/api/v1/rollouts", '{"a":' * 20_000 + "1" + "}" * 20_000),
    ],
)
def test_deeply_nested_body_is_a_4xx(client, method, path, body):
    r = client.open(path, method=method, data=body, content_type="application/json", headers=auth("admin"))
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_body"
    assert "recursion limit" in r.json["error"]["message"]


@pytest.mark.parametrize("body", ["NaN", '{"model_name": NaN}', '{"model_name": 1e999}', "[]", '"x"', "{"])
def test_bodies_that_are_not_a_json_object_are_400(client, body):
    r = client.put(
        "/api/v1/agents/x/desired", data=body, content_type="application/json", headers=auth("admin")
    )
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_body", r.json


@pytest.mark.parametrize("limit", ["abc", "²", "0", "1001", "1.5", "-1"])
def test_bad_audit_limit_is_400_naming_it(client, limit):
    r = client.get("/api/v1/audit", query_string={"limit": limit}, headers=auth("admin"))
    assert r.status_code == 400, r.json
    assert r.json["error"]["code"] == "invalid_parameter" and r.json["error"]["message"].startswith("limit")


def test_query_models_name_the_parameter(client):
    h = auth("admin")
    r = client.get("/api/v1/rollouts?state=done", headers=h)
    assert r.status_code == 400 and "state must be one of" in r.json["error"]["message"]
    r = client.get("/api/v1/classifications?since=0001-01-01T00:00:00%2B01:00", headers=h)
    assert r.status_code == 400 and r.json["error"]["message"].startswith("since must be an ISO 8601 time")
    r = client.get("/api/v1/models/compare?b=leuko/1.0.0", headers=h)
    assert r.status_code == 400 and "a is required" in r.json["error"]["message"]
    assert client.get("/api/v1/audit?limit=", headers=h).status_code == 200  # empty = default


#: (method, URL, JSON body, where): a NUL in a JSON string or key, a query value, a path parameter
NUL_CASES = [
    ("PUT", "/api/v1/agents/a1/desired", {"model_name": "le\x00uko", "model_version": "1"}, "model_name"),
    ("PUT", "/api/v1/labs/North/tags", {"tags": ["ok", "pi\x00lot"]}, "tags.1"),
    ("POST", "/api/v1/training-jobs", {**SPEC, "dataset": "set\x00"}, "dataset"),
    ("POST", "/api/v1/training-jobs/claim", {"worker\x00": "t1"}, "key 'worker\\x00'"),
    ("GET", "/api/v1/classifications?label=A%00LL", None, "label"),
    ("GET", "/api/v1/agents?tag=%00", None, "tag"),
    ("GET", "/api/v1/audit?subject=rollout/%00", None, "subject"),
    ("GET", "/api/v1/agents/a%00b", None, "agent_id"),
    ("GET", "/api/v1/agents/a%00b/history", None, "agent_id"),
    ("PUT", "/api/v1/labs/La%00b/tags", {"tags": []}, "lab"),
    ("GET", "/api/v1/models/le%00uko/1.0.0", None, "name"),
    ("GET", "/api/v1/training-jobs/%00", None, "job_id"),
]


def check_nul_is_refused(app: Flask) -> None:
    client = app.test_client()
    for method, url, body, where in NUL_CASES:
        r = client.open(url, method=method, json=body, headers=auth("admin"))
        assert r.status_code == 400, (url, r.status_code, r.get_data(as_text=True))
        code = "invalid_body" if body and "%00" not in url else "invalid_parameter"
        assert r.json["error"]["code"] == code, url
        assert where in r.json["error"]["message"] and "NUL" in r.json["error"]["message"], r.json


def test_nul_characters_are_400_on_sqlite(app):
    check_nul_is_refused(app)


@pytest.mark.integration
def test_nul_characters_are_400_on_postgresql(tmp_path, keys, postgres_url):
    app = migrated_app(hub_config(tmp_path, keys, database_url=postgres_url))
    try:
        check_nul_is_refused(app)
        # the same routes still work on PostgreSQL without the NUL
        assert app.test_client().get("/api/v1/agents/ab", headers=auth("admin")).status_code == 404
    finally:
        close_app(app)


# --- schemathesis against every operation ------------------------------------------------------


@dataclass
class Seeded:
    app: Flask
    env: Env
    #: a resource that exists, per path parameter name
    path_values: dict[str, str]


@pytest.fixture
def seeded(env: Env) -> Seeded:
    """The rollout env (private Mosquitto, leuko 1.0.0 and 2.0.0) with agents, results, tags, a
    rollout, model events and a running training job, so responses carry real rows."""
    ids = env.agents(3)
    IngestWriter(env.services.db).write([make_result(agent_id=a) for a in ids])
    h = auth("admin")
    for url, tags in ((f"/api/v1/agents/{ids[0]}/tags", ["pilot"]), ("/api/v1/labs/Lab A/tags", ["site:a"])):
        assert env.client.put(url, json={"tags": tags}, headers=h).status_code == 200
    rollout = env.start(target={"agents": ids[:2]}, stages=[50, 100])
    env.report(rollout, ids[:1], ModelEventKind.ACTIVATED)
    job = env.client.post("/api/v1/training-jobs", json=SPEC, headers=h).json
    assert env.client.post("/api/v1/training-jobs/claim", json={"worker": "t1"}, headers=h).status_code == 200
    values = {
        "agent_id": ids[0],
        "lab": "Lab A",
        "name": "leuko",
        "version": "1.0.0",
        "rollout_id": rollout["rollout_id"],
        "job_id": job["job_id"],
    }
    return Seeded(env.app, env, values)


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[None]:
    """Count examples and requests per operation and their statuses; print them when the test ends."""
    for counter in (EXAMPLES, REQUESTS, STATUSES):
        counter.clear()
    yield
    line = (
        f"schemathesis: {len(EXAMPLES)} operations, {sum(EXAMPLES.values())} examples, "
        f"{sum(REQUESTS.values())} requests, statuses {dict(sorted(STATUSES.items()))}"
    )
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


def exercise(case: schemathesis.Case, seeded: Seeded) -> None:
    """Send ``case`` as admin and check it; with path parameters, again on resources that exist."""
    label = f"{case.method.upper()} {case.path}"
    EXAMPLES[label] += 1
    cases = [case]
    known = {k: v for k, v in seeded.path_values.items() if k in case.path_parameters}
    if known:
        on_seeded = case.derive(keep_auth=True)
        on_seeded.path_parameters = {**case.path_parameters, **known}
        cases.append(on_seeded)
    for c in cases:
        response = c.call_and_validate(headers=auth("admin"), checks=CHECKS)
        REQUESTS[label] += 1
        STATUSES[response.status_code] += 1


def fuzz(operation: Any, mode: GenerationMode, seeded: Seeded) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        exercise(case, seeded)

    run()


def closing(app: Flask) -> Callable[[dict[str, Any], Any], list[bytes]]:
    """``app`` as a WSGI callable that reads and closes each response body.

    schemathesis reads an in-process response without closing it, which would leave the file of a
    bundle download (``send_file``) open: a ResourceWarning, an error under ``-W error``.
    """

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = app(environ, start_response)
        try:
            return [b"".join(body)]
        finally:
            if hasattr(body, "close"):
                body.close()

    return wsgi


def test_every_operation_conforms_to_the_document(seeded, subtests, tally):
    """schemathesis, in-process: valid and invalid requests to every operation, as admin, answer no
    5xx and only the statuses, content types and bodies the document gives."""
    schema = schemathesis.openapi.from_wsgi(DOC, closing(seeded.app))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {f"{m} {p}" for m, p in _operations(schema.raw_schema)}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            with subtests.test(operation=operation.label, mode=mode.value):
                fuzz(operation, mode, seeded)
    assert set(EXAMPLES) == {op.label for op in operations}
    assert not [status for status in STATUSES if status >= 500]


def test_successful_answers_conform_to_the_document(seeded):
    """Requests that succeed on the seeded hub (random ones rarely name a registered model), checked
    the same way: each success body matches its documented model."""
    schema = schemathesis.openapi.from_wsgi(DOC, closing(seeded.app))
    job = {"job_id": seeded.path_values["job_id"]}
    worker = {"worker": "t1"}
    desired = {"model_name": "leuko", "model_version": "2.0.0"}
    rollout = {"model_name": "leuko", "model_version": "1.0.0", "target": {"agents": ["b00"]}}
    progress = {"phase": "train", "done": 1, "total": 9}
    known: list[tuple[str, dict[str, Any], int]] = [
        ("compare_models", {"query": {"a": "leuko/1.0.0", "b": "leuko/2.0.0"}}, 200),
        ("put_desired", {"path_parameters": {"agent_id": "a02"}, "body": desired}, 200),
        ("start_rollout", {"body": rollout}, 201),
        ("rollout_action", {"path_parameters": {**seeded.path_values, "action": "pause"}}, 200),
        ("report_training_progress", {"path_parameters": job, "query": worker, "body": progress}, 200),
        ("fail_training_job", {"path_parameters": job, "query": worker, "body": {"error": "disk"}}, 200),
    ]
    for operation_id, parts, status in known:
        case = schema.find_operation_by_id(operation_id).Case(**parts)
        response = case.call_and_validate(headers=auth("admin"), checks=CHECKS)
        assert response.status_code == status, (operation_id, response.content)


def test_ingest_counters_conform_to_the_document(app, config):
    """``GET /ingest/stats`` of a web process that runs the ingest worker (the fuzzed app runs none)."""
    stats = IngestStats()
    stats.set_flags(running=True, connected=True)
    stats.add_invalid("schema", 2)
    stats.committed(stored=3, duplicates=1, statuses=1, events=0)
    stats.loops.beat("ingest-writer")
    stats.loops.watch("ingest-mqtt", lambda: True)
    with_ingest = create_app(
        config, build_services(config, ingest_stats=stats)
    )  # the fixture migrated its db
    try:
        schema = schemathesis.openapi.from_wsgi(DOC, with_ingest)
        case = schema.find_operation_by_id("ingest_stats").Case()
        response = case.call_and_validate(headers=auth("admin"), checks=CHECKS)
        assert response.status_code == 200 and response.json()["stored"] == 3
    finally:
        close_app(with_ingest)
