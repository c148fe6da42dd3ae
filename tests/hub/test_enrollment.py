"""Agent enrollment through the API: single-use expiring tokens, bound ids and labs, the agent's own
API token and broker login, rotation without re-enrolling, revocation, and ingest refusing a revoked
agent. The broker side is a recording stand-in here; tests/integration/test_identity_e2e.py runs
the same flow against a real Mosquitto with the dynamic security plugin."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from hub.broker.dynsec import BrokerAccountsError
from hub.db.models import Agent, AuditEntry, Classification, EnrollmentToken
from hub.extensions import hub_ext
from hub.ingest.admission import Admission
from hub.ingest.writer import IngestWriter
from shared.clock import utcnow
from tests.hub.conftest import auth, make_result


class RecordingAccounts:
    """Broker accounts in memory: who exists with which password; can be made to fail."""

    enforced = True

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail = False

    def _maybe_fail(self) -> None:
        if self.fail:
            raise BrokerAccountsError("broker 127.0.0.1:1 did not answer within 1 s")

    def ensure_hub_role(self, hub_username: str) -> None:
        self.calls.append(("ensure_hub_role", hub_username))

    def add_agent(self, agent_id: str, password: str) -> None:
        self._maybe_fail()
        self.calls.append(("add_agent", agent_id))
        self.passwords[agent_id] = password

    def set_password(self, agent_id: str, password: str) -> None:
        self._maybe_fail()
        self.calls.append(("set_password", agent_id))
        self.passwords[agent_id] = password

    def remove_agent(self, agent_id: str) -> None:
        self._maybe_fail()
        self.calls.append(("remove_agent", agent_id))
        self.passwords.pop(agent_id, None)

    def agents(self) -> list[str]:
        return sorted(self.passwords)

    def close(self) -> None:
        pass


@pytest.fixture
def accounts(app) -> RecordingAccounts:
    rec = RecordingAccounts()
    with app.app_context():
        hub_ext.services.enrollment.accounts = rec
    return rec


def issue(client, **body) -> dict:
    r = client.post("/api/v1/agents/enrollment-tokens", json=body, headers=auth("admin"))
    assert r.status_code == 201, r.json
    return r.json


def enroll(client, token: str, agent_id: str = "lab1-scope1", lab: str = "Lab 1"):
    return client.post("/api/v1/enroll", json={"token": token, "agent_id": agent_id, "lab": lab})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_enrolls_once_and_gives_the_agent_its_own_credentials(client, app, accounts):
    issued = issue(client)
    assert (
        issued["token"].startswith("lke_")
        and f"LEUKONET_ENROLL_TOKEN={issued['token']} " in issued["command"]
    )
    r = enroll(client, issued["token"])
    assert r.status_code == 201, r.json
    creds = r.json
    assert creds["agent_id"] == creds["mqtt"]["username"] == "lab1-scope1"
    assert accounts.passwords["lab1-scope1"] == creds["mqtt"]["password"]
    # the agent's API token carries the agent role: models yes, the fleet no
    assert client.get("/api/v1/models", headers=bearer(creds["api_token"])).status_code == 200
    assert client.get("/api/v1/agents", headers=bearer(creds["api_token"])).status_code == 403
    # used once: a second redemption, even for the same agent, is refused and changes nothing
    again = enroll(client, issued["token"])
    assert again.status_code == 401 and again.json["error"]["code"] == "invalid_enrollment_token"
    assert [c for c in accounts.calls if c[0] == "add_agent"] == [("add_agent", "lab1-scope1")]
    with app.app_context(), hub_ext.services.db.session() as s:
        row = s.scalar(select(EnrollmentToken))
        assert row is not None and row.token_hash != issued["token"] and issued["token"] not in row.token_hash
        assert row.used_by == "lab1-scope1"
        agent = s.scalar(select(Agent).where(Agent.agent_id == "lab1-scope1"))
        assert agent is not None and agent.lab == "Lab 1" and agent.enrolled_at is not None
        actions = [a.action for a in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
        assert {"enrollment.issue", "token.create", "agent.enroll"} <= set(actions)


def test_an_expired_token_is_refused(client, app, accounts):
    issued = issue(client, ttl_s=60)
    with app.app_context():
        enrollment = hub_ext.services.enrollment
        enrollment.clock = lambda: utcnow() + timedelta(seconds=61)
    r = enroll(client, issued["token"])
    assert r.status_code == 401 and "expired" in r.json["error"]["message"]
    assert accounts.calls == []


@pytest.mark.parametrize(
    "value",
    ["", "lke_short", "lkn_AAAAAAAAAAAA_" + "x" * 43, "lke_AAAAAAAAAAAA_" + "x" * 43, "\x00" * 10],
)
def test_made_up_tokens_are_refused(client, accounts, value):
    r = enroll(client, value)
    assert r.status_code in (400, 401, 422), r.json
    assert accounts.calls == []


def test_a_bound_token_works_only_for_its_agent_and_lab(client, accounts):
    issued = issue(client, agent_id="lab1-scope1", lab="Lab 1")
    wrong_agent = enroll(client, issued["token"], agent_id="lab2-scope1")
    assert wrong_agent.status_code == 403 and "lab1-scope1" in wrong_agent.json["error"]["message"]
    wrong_lab = enroll(client, issued["token"], lab="Lab 2")
    assert wrong_lab.status_code == 403
    assert enroll(client, issued["token"]).status_code == 201


@pytest.mark.parametrize("agent_id", ["leukonet-hub-ingest", "Leukonet-Hub-x", "bad/id", "+", "#"])
def test_the_hubs_client_ids_and_invalid_ids_cannot_be_enrolled(client, accounts, agent_id):
    r = enroll(client, issue(client)["token"], agent_id=agent_id)
    assert r.status_code == 422, r.json
    assert accounts.calls == []


def test_only_an_admin_issues_tokens(client):
    for role in ("trainer", "agent"):
        assert client.post("/api/v1/agents/enrollment-tokens", json={}, headers=auth(role)).status_code == 403
    assert client.post("/api/v1/agents/enrollment-tokens", json={}).status_code == 401


def test_a_broker_outage_leaves_the_token_unused(client, accounts):
    issued = issue(client)
    accounts.fail = True
    r = enroll(client, issued["token"])
    assert r.status_code == 503 and "retry" in r.json["error"]["message"]
    accounts.fail = False
    assert enroll(client, issued["token"]).status_code == 201


def test_an_agent_rotates_its_own_credentials_without_re_enrolling(client, accounts):
    creds = enroll(client, issue(client)["token"]).json
    r = client.post("/api/v1/agents/self/credentials", json={}, headers=bearer(creds["api_token"]))
    assert r.status_code == 200, r.json
    new = r.json
    assert new["api_token"] != creds["api_token"] and new["mqtt"]["password"] != creds["mqtt"]["password"]
    assert accounts.passwords["lab1-scope1"] == new["mqtt"]["password"]
    assert client.get("/api/v1/models", headers=bearer(creds["api_token"])).status_code == 401
    assert client.get("/api/v1/models", headers=bearer(new["api_token"])).status_code == 200
    # a config-file agent token belongs to no agent: it cannot rotate anything
    assert client.post("/api/v1/agents/self/credentials", json={}, headers=auth("agent")).status_code == 403


def test_revoke_disconnects_refuses_and_readmits_only_with_a_bound_token(client, app, accounts):
    creds = enroll(client, issue(client)["token"]).json
    assert (
        client.post("/api/v1/agents/lab1-scope1/revoke", json={}, headers=auth("trainer")).status_code == 403
    )
    r = client.post("/api/v1/agents/lab1-scope1/revoke", json={}, headers=auth("admin"))
    assert r.status_code == 200, r.json
    assert r.json["state"] == "revoked" and r.json["revoked_at"]
    assert ("remove_agent", "lab1-scope1") in accounts.calls and "lab1-scope1" not in accounts.passwords
    assert client.get("/api/v1/models", headers=bearer(creds["api_token"])).status_code == 401
    rotate = client.post("/api/v1/agents/self/credentials", json={}, headers=bearer(creds["api_token"]))
    assert rotate.status_code == 401
    # an unbound token does not bring a revoked agent back; one issued for it does
    assert enroll(client, issue(client)["token"]).status_code == 403
    assert enroll(client, issue(client, agent_id="lab1-scope1")["token"]).status_code == 201
    assert client.post("/api/v1/agents/nobody/revoke", json={}, headers=auth("admin")).status_code == 404


def test_ingest_refuses_a_revoked_agent_whatever_the_settings(client, app, accounts):
    enroll(client, issue(client)["token"])
    client.post("/api/v1/agents/lab1-scope1/revoke", json={}, headers=auth("admin"))
    with app.app_context():
        db = hub_ext.services.db
    writer = IngestWriter(db, Admission(auto_register=True))
    stored = make_result(agent_id="lab1-scope1")
    outcome = writer.write([stored])
    assert outcome.refused == {"revoked_agent": 1}
    with db.session() as s:
        assert s.scalar(select(Classification)) is None
        assert s.scalar(select(Agent.state).where(Agent.agent_id == "lab1-scope1")) == "revoked"


def test_pending_tokens_list_ids_never_values(client, accounts):
    issued = issue(client, agent_id="lab9-scope1")
    enroll(client, issue(client)["token"])
    r = client.get("/api/v1/agents/enrollment-tokens", headers=auth("admin"))
    assert r.status_code == 200
    assert [t["token_id"] for t in r.json["items"]] == [issued["token_id"]]
    assert issued["token"] not in r.get_data(as_text=True)
