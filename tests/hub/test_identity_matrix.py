"""The identity matrix of the REST API: every actor × action, allowed or refused, as docs/security.md
states it. An actor is anonymous, a person's token of each role (created as the dashboard and CLI
create them, stored hashed), a trainer service token, an enrolled agent, or a revoked agent.

``allowed`` means the hub did not answer 401/403 (the action may still fail for other reasons, e.g.
404 for a made-up id); ``refused`` means 401 or 403. Set ``LEUKONET_MATRIX_OUT=<file>`` to write the
matrix as a Markdown table (the closing note of the identity issue quotes it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hub.extensions import hub_ext
from hub.identity.tokens import create_token
from hub.roles import Role
from shared.clock import utcnow
from tests.hub.conftest import auth
from tests.hub.test_enrollment import RecordingAccounts, enroll, issue

ACTIONS: dict[str, tuple[str, str, dict | None]] = {
    "read fleet": ("GET", "/api/v1/agents", None),
    "read results": ("GET", "/api/v1/classifications", None),
    "read audit": ("GET", "/api/v1/audit", None),
    "list models": ("GET", "/api/v1/models", None),
    "download bundle": ("GET", "/api/v1/models/m/1.0.0/bundle", None),
    "upload model": ("POST", "/api/v1/models", None),
    "set desired": ("PUT", "/api/v1/agents/lab1-scope1/desired", {"model_name": "m", "model_version": "1"}),
    "start rollout": ("POST", "/api/v1/rollouts", {}),
    "tag agent": ("PUT", "/api/v1/agents/lab1-scope1/tags", {"tags": ["x"]}),
    "queue training": ("POST", "/api/v1/training-jobs", {}),
    "claim training job": ("POST", "/api/v1/training-jobs/claim", {"worker": "w"}),
    "issue enrollment token": ("POST", "/api/v1/agents/enrollment-tokens", {}),
    "revoke agent": ("POST", "/api/v1/agents/nobody/revoke", {}),
    "rotate own credentials": ("POST", "/api/v1/agents/self/credentials", {}),
}
READ = {"read fleet", "read results", "read audit", "list models"}
OPERATE = {"set desired", "start rollout", "tag agent", "queue training", "upload model"}
ADMIN = {"issue enrollment token", "revoke agent"}
EXPECTED: dict[str, set[str]] = {
    "anonymous": set(),
    "viewer": READ,
    "reviewer": READ,
    "operator": READ | OPERATE,
    "admin": READ | OPERATE | ADMIN | {"download bundle", "claim training job"},
    "trainer (service)": READ | {"upload model", "claim training job"},
    "agent (enrolled)": {"list models", "download bundle", "rotate own credentials"},
    "agent (revoked)": set(),
}


@pytest.fixture
def actors(app, client) -> dict[str, dict[str, str]]:
    with app.app_context():
        services = hub_ext.services
        services.enrollment.accounts = RecordingAccounts()
        headers: dict[str, dict[str, str]] = {"anonymous": {}}
        with services.db.session() as s:
            for role in (Role.VIEWER, Role.REVIEWER, Role.OPERATOR, Role.ADMIN):
                t = create_token(s, name=f"{role.value}-token", role=role, actor="test", now=utcnow())
                headers[role.value] = {"Authorization": f"Bearer {t.value}"}
            s.commit()
    headers["trainer (service)"] = auth("trainer")
    agent = enroll(client, issue(client)["token"]).json
    headers["agent (enrolled)"] = {"Authorization": f"Bearer {agent['api_token']}"}
    revoked = enroll(client, issue(client)["token"], agent_id="lab2-scope1").json
    assert client.post("/api/v1/agents/lab2-scope1/revoke", json={}, headers=auth("admin")).status_code == 200
    headers["agent (revoked)"] = {"Authorization": f"Bearer {revoked['api_token']}"}
    return headers


def test_identity_matrix(client, actors):
    seen: dict[str, set[str]] = {}
    rows = []
    for actor, headers in actors.items():
        allowed = set()
        for action, (method, path, body) in ACTIONS.items():
            if action == "rotate own credentials" and actor == "agent (enrolled)":
                continue  # checked last: it kills the token the other rows use
            r = client.open(path, method=method, json=body, headers=headers)
            assert r.status_code < 500, (actor, action, r.status_code, r.json)
            if r.status_code not in (401, 403):
                allowed.add(action)
        if actor == "agent (enrolled)":
            r = client.post("/api/v1/agents/self/credentials", json={}, headers=headers)
            if r.status_code == 200:
                allowed.add("rotate own credentials")
        seen[actor] = allowed
        rows.append((actor, allowed))
    _write_table(rows)
    assert seen == EXPECTED


def _write_table(rows: list[tuple[str, set[str]]]) -> None:
    out = os.environ.get("LEUKONET_MATRIX_OUT")
    if not out:
        return
    names = list(ACTIONS)
    lines = ["| actor | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for actor, allowed in rows:
        lines.append(f"| {actor} | " + " | ".join("✔" if a in allowed else "✘" for a in names) + " |")
    Path(out).write_text("\n".join(lines) + "\n")
