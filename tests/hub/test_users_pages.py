"""The people pages through Flask's test client: ``/account`` (own password and API tokens),
``/admin/users``, ``/admin/tokens`` and ``/admin/agents`` (admins only: 403 and no nav link for the
others), every form CSRF-checked and audited with the person's name, token values shown once.

``/admin/agents`` runs against a small stand-in for ``services.enrollment`` that records its calls,
so the page is tested apart from the broker work of the real enrollment service."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from hub.db.models import Agent, AuditEntry
from hub.errors import HubError
from hub.extensions import hub_ext
from hub.ingest.writer import IngestWriter
from shared.clock import utcnow
from shared.schemas import AgentState, AgentStatus
from tests.hub.conftest import USER_PASSWORD, add_user, csrf, login, login_as

ADMIN_PAGES = ("/admin/users", "/admin/tokens", "/admin/agents")


def token_value(html: str) -> str:
    m = re.search(r'id="new-token-value">(lkn_[A-Za-z0-9_-]+)<', html)
    assert m, "no new token value in the page"
    return m.group(1)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def last_audit(app) -> AuditEntry:
    with hub_ext.for_app(app).db.session() as s:
        entry = s.scalar(select(AuditEntry).order_by(AuditEntry.id.desc()))
        assert entry is not None
        return entry


# --- who sees what -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["viewer", "reviewer", "operator"])
def test_admin_pages_are_403_and_hidden_for_other_roles(app, client, role):
    login_as(app, client, role)
    nav = client.get("/").data.decode()
    assert 'id="nav-account"' in nav and f"({role})" in nav
    assert 'id="nav-users"' not in nav and 'id="nav-tokens"' not in nav and 'id="nav-agents"' not in nav
    token = csrf(nav)
    for path in ADMIN_PAGES:
        r = client.get(path)
        assert r.status_code == 403 and f"your role {role} may not do this".encode() in r.data, path
    posts = {
        "/admin/users": {
            "username": "mallory",
            "role": "admin",
            "password": "x" * 20,
            "confirm_password": "x" * 20,
        },
        "/admin/users/admin/disable": {},
        "/admin/users/admin/password": {"password": "y" * 20, "confirm_password": "y" * 20},
        "/admin/tokens": {"name": "mine", "role": "admin"},
        "/admin/agents/enrollment-tokens": {},
        "/admin/agents/scope-1/revoke": {"confirm": "yes"},
    }
    for path, form in posts.items():
        assert client.post(path, data={**form, "csrf_token": token}).status_code == 403, path
    assert client.get("/account").status_code == 200
    with hub_ext.for_app(app).db.session() as s:
        assert (
            s.scalar(
                select(AuditEntry).where(AuditEntry.action.startswith("user."), AuditEntry.actor == role)
            )
            is None
        )


def test_admins_see_the_admin_links(app, client):
    login(client)
    nav = client.get("/").data.decode()
    for link in ('id="nav-users"', 'id="nav-tokens"', 'id="nav-agents"', 'id="nav-account"'):
        assert link in nav, link


def test_admin_pages_redirect_to_login_without_a_session(client):
    for path in (*ADMIN_PAGES, "/account"):
        r = client.get(path)
        assert r.status_code == 302 and f"/login?next={path}" in r.headers["Location"], path


# --- /account ------------------------------------------------------------------------------------


def test_account_tokens_carry_only_the_persons_role_and_are_shown_once(app, client):
    login_as(app, client, "viewer")
    page = client.get("/account").data.decode()
    assert re.findall(r'<option value="([a-z]+)"', page) == ["viewer"]
    token = csrf(page)
    refused = client.post("/account/tokens", data={"csrf_token": token, "name": "sneaky", "role": "admin"})
    assert refused.status_code == 422 and b"choose one of: viewer" in refused.data
    assert client.post("/account/tokens", data={"name": "x", "role": "viewer"}).status_code == 400

    r = client.post(
        "/account/tokens",
        data={"csrf_token": token, "name": "laptop", "role": "viewer", "expires_days": "30"},
    )
    assert r.status_code == 201
    value = token_value(r.data.decode())
    assert value not in client.get("/account").data.decode()  # shown once
    assert "laptop" in client.get("/account").data.decode()
    api = app.test_client()
    assert api.get("/api/v1/agents", headers=bearer(value)).status_code == 200
    entry = api.get("/api/v1/audit", headers=bearer(value)).json["items"][0]
    assert (entry["actor"], entry["action"]) == ("viewer", "token.create")
    assert api.put("/api/v1/agents/a/tags", json={"tags": []}, headers=bearer(value)).status_code == 403

    token_id = value.split("_")[1]
    r = client.post(f"/account/tokens/{token_id}/revoke", data={"csrf_token": token}, follow_redirects=True)
    assert f"token {token_id} revoked".encode() in r.data
    assert api.get("/api/v1/agents", headers=bearer(value)).status_code == 401


def test_nobody_revokes_someone_elses_token_from_their_account(app, client):
    login(client)
    page = client.get("/account").data.decode()
    admin_token = token_value(
        client.post(
            "/account/tokens", data={"csrf_token": csrf(page), "name": "ops", "role": "operator"}
        ).data.decode()
    )
    other = app.test_client()
    login_as(app, other, "operator")
    token_id = admin_token.split("_")[1]
    r = other.post(
        f"/account/tokens/{token_id}/revoke",
        data={"csrf_token": csrf(other.get("/account").data.decode())},
        follow_redirects=True,
    )
    assert b"is not one of your live tokens" in r.data
    assert app.test_client().get("/api/v1/agents", headers=bearer(admin_token)).status_code == 200


def test_changing_ones_password_checks_the_current_one_and_the_rules(app, client):
    add_user(app, "alice", "reviewer")
    login_as(app, client, "alice")
    page = client.get("/account").data.decode()
    token = csrf(page)

    def change(current: str, new: str, again: str | None = None) -> Any:
        form = {
            "csrf_token": token,
            "current_password": current,
            "new_password": new,
            "confirm_password": again or new,
        }
        return client.post("/account/password", data=form)

    assert change("not it", "a good new password").status_code == 400
    assert change(USER_PASSWORD, "short").status_code == 422
    assert b"at least 12 characters" in change(USER_PASSWORD, "short").data
    assert change(USER_PASSWORD, "a good new password", "a different one!!").status_code == 422
    assert change(USER_PASSWORD, "change-me-to-64-random-characters").status_code == 422
    r = change(USER_PASSWORD, "a good new password")
    assert r.status_code == 302
    entry = last_audit(app)
    assert (entry.actor, entry.action) == ("alice", "user.password_change")
    with hub_ext.for_app(app).db.session() as s:
        failures = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "login.failed", AuditEntry.actor == "alice")
        ).all()
    assert len(failures) == 1  # the wrong current password counted towards the lockout


# --- /admin/users --------------------------------------------------------------------------------


def test_admin_adds_disables_enables_resets_and_unlocks_users(app, client):
    login(client)
    page = client.get("/admin/users").data.decode()
    token = csrf(page)
    form = {
        "csrf_token": token,
        "username": "bob",
        "role": "operator",
        "password": USER_PASSWORD,
        "confirm_password": USER_PASSWORD,
    }
    assert client.post("/admin/users", data=form).status_code == 302
    assert client.post("/admin/users", data=form).status_code == 409
    weak = client.post(
        "/admin/users", data={**form, "username": "carol", "password": "short", "confirm_password": "short"}
    )
    assert (
        weak.status_code == 422 and b"at least 12 characters" in weak.data and b'value="carol"' in weak.data
    )
    html = client.get("/admin/users").data.decode()
    assert 'data-user="bob"' in html and "operator" in html
    assert (last_audit(app).actor, last_audit(app).action) == ("admin", "user.create")

    bob = app.test_client()
    assert login(bob, "bob", USER_PASSWORD).status_code == 302
    r = client.post("/admin/users/bob/disable", data={"csrf_token": token}, follow_redirects=True)
    assert b"bob disabled: 1 session(s) ended" in r.data
    assert bob.get("/").status_code == 302
    assert login(bob, "bob", USER_PASSWORD).status_code == 403
    client.post("/admin/users/bob/enable", data={"csrf_token": token})
    assert login(bob, "bob", USER_PASSWORD).status_code == 302

    for _ in range(hub_ext.for_app(app).config.login.max_failures):
        login(app.test_client(), "bob", "wrong")
    assert "ustate-locked" in client.get("/admin/users").data.decode()
    client.post("/admin/users/bob/unlock", data={"csrf_token": token})
    assert "ustate-locked" not in client.get("/admin/users").data.decode()

    new = "bob's reset password"
    r = client.post(
        "/admin/users/bob/password",
        data={"csrf_token": token, "password": new, "confirm_password": new},
        follow_redirects=True,
    )
    assert b"password of bob reset: 1 session(s) ended" in r.data
    assert bob.get("/").status_code == 302 and login(bob, "bob", new).status_code == 302
    actions = [a["action"] for a in client.get("/api/v1/audit?subject=user/bob").json["items"]]
    for action in ("user.create", "user.disable", "user.enable", "user.unlock", "user.password_reset"):
        assert action in actions, action


def test_admin_cannot_lock_themselves_out(app, client):
    login(client)
    token = csrf(client.get("/admin/users").data.decode())
    r = client.post("/admin/users/admin/disable", data={"csrf_token": token})
    assert r.status_code == 409 and b"cannot disable your own account" in r.data
    r = client.post(
        "/admin/users/admin/password",
        data={"csrf_token": token, "password": "x" * 20, "confirm_password": "x" * 20},
    )
    assert r.status_code == 409 and b"Account page" in r.data
    assert client.post("/admin/users/ghost/disable", data={"csrf_token": token}).status_code == 404
    assert client.post("/admin/users/admin/explode", data={"csrf_token": token}).status_code == 404
    assert client.post("/admin/users/admin/unlock").status_code == 400  # no CSRF token


# --- /admin/tokens -------------------------------------------------------------------------------


def test_admin_creates_service_tokens_with_any_role_and_revokes_any_token(app, client):
    add_user(app, "alice", "operator")
    alice = app.test_client()
    login_as(app, alice, "alice")
    alice_token = token_value(
        alice.post(
            "/account/tokens",
            data={
                "csrf_token": csrf(alice.get("/account").data.decode()),
                "name": "alice-laptop",
                "role": "operator",
            },
        ).data.decode()
    )

    login(client)
    page = client.get("/admin/tokens").data.decode()
    assert "alice-laptop" in page and "<td>alice</td>" in page  # personal tokens show who they act for
    token = csrf(page)
    r = client.post("/admin/tokens", data={"csrf_token": token, "name": "gpu-trainer", "role": "trainer"})
    assert r.status_code == 201
    trainer = token_value(r.data.decode())
    api = app.test_client()
    assert api.get("/api/v1/training-jobs", headers=bearer(trainer)).status_code == 200
    assert (
        api.post("/api/v1/training-jobs/claim", json={"worker": "w"}, headers=bearer(trainer)).status_code
        == 204
    )
    entry = client.get("/api/v1/audit").json["items"][0]
    assert (entry["actor"], entry["action"], entry["details"]["role"]) == ("admin", "token.create", "trainer")
    bad = client.post("/admin/tokens", data={"csrf_token": token, "name": "", "role": "trainer"})
    assert bad.status_code == 422 and b"name: enter 1 to 64" in bad.data
    bad = client.post(
        "/admin/tokens", data={"csrf_token": token, "name": "x", "role": "trainer", "expires_days": "0"}
    )
    assert bad.status_code == 422 and b"expires in days" in bad.data

    alice_id = alice_token.split("_")[1]
    r = client.post(f"/admin/tokens/{alice_id}/revoke", data={"csrf_token": token}, follow_redirects=True)
    assert f"token {alice_id} revoked".encode() in r.data
    assert api.get("/api/v1/agents", headers=bearer(alice_token)).status_code == 401
    assert (
        b"no live token"
        in client.post(
            f"/admin/tokens/{alice_id}/revoke", data={"csrf_token": token}, follow_redirects=True
        ).data
    )


def test_expiring_tokens_expire(app, client):
    login(client)
    page = client.get("/account").data.decode()
    r = client.post(
        "/account/tokens",
        data={"csrf_token": csrf(page), "name": "short-lived", "role": "admin", "expires_days": "1"},
    )
    value = token_value(r.data.decode())
    store = hub_ext.for_app(app).auth.store
    assert store.authenticate(value, utcnow()) is not None
    assert store.authenticate(value, utcnow() + timedelta(days=1, minutes=1)) is None


# --- /admin/agents -------------------------------------------------------------------------------


@dataclass
class Issued:
    value: str
    token_id: str
    agent_id: str | None
    lab: str | None
    expires_at: datetime


@dataclass
class Pending:
    token_id: str
    agent_id: str | None
    lab: str | None
    created_by: str
    expires_at: datetime


@dataclass
class StubEnrollment:
    """Records calls as the real ``services.enrollment`` would receive them."""

    issued: list[tuple[Any, ...]] = field(default_factory=list)
    revoked: list[tuple[str, str]] = field(default_factory=list)

    def issue(self, actor: str, agent_id: str | None, lab: str | None, ttl_s: int | None) -> Issued:
        if agent_id == "leukonet-hub":
            raise HubError(422, "invalid_agent_id", "agent ids starting with leukonet-hub are reserved")
        self.issued.append((actor, agent_id, lab, ttl_s))
        return Issued(
            "lke_abcdefABCDEF_" + "s" * 43, "abcdefABCDEF", agent_id, lab, utcnow() + timedelta(hours=24)
        )

    def revoke(self, agent_id: str, actor: str) -> None:
        if agent_id == "ghost":
            raise HubError(404, "not_found", f"agent {agent_id!r} is not registered")
        self.revoked.append((agent_id, actor))

    def pending_tokens(self) -> list[Pending]:
        return [
            Pending("abcdefABCDEF", agent_id, lab, actor, utcnow()) for actor, agent_id, lab, _ in self.issued
        ]


@pytest.fixture
def enrollment(app) -> StubEnrollment:
    stub = StubEnrollment()
    hub_ext.for_app(app).enrollment = stub  # type: ignore[assignment]
    return stub


def test_agents_page_lists_agents_issues_tokens_once_and_revokes_after_confirming(
    app, client, db, enrollment
):
    IngestWriter(db).write([AgentStatus(agent_id="scope-1", state=AgentState.ONLINE, lab="Lab A")])
    with db.transaction() as s:
        s.scalar(select(Agent).where(Agent.agent_id == "scope-1")).enrolled_at = utcnow()
    login(client)
    page = client.get("/admin/agents").data.decode()
    assert 'data-agent="scope-1"' in page and "Lab A" in page and "online" in page
    token = csrf(page)
    r = client.post(
        "/admin/agents/enrollment-tokens",
        data={"csrf_token": token, "agent_id": "scope-2", "lab": "Lab B", "lifetime_hours": "2"},
    )
    assert r.status_code == 201
    html = r.data.decode()
    command = re.search(r'id="enroll-command">(.*?)</code>', html).group(1)
    assert command == (
        "LEUKONET_ENROLL_TOKEN=lke_abcdefABCDEF_" + "s" * 43 + " leukonet agent enroll "
        "--config &lt;agent.yaml&gt; --hub http://hub.test:8080"
    )
    assert enrollment.issued == [("admin", "scope-2", "Lab B", 7200)]
    again = client.get("/admin/agents").data.decode()
    assert "lke_abcdef" not in again and "abcdefABCDEF" in again  # pending by id, value never again

    client.post(
        "/admin/agents/enrollment-tokens",
        data={"csrf_token": token, "agent_id": "", "lab": "", "lifetime_hours": ""},
    )
    assert enrollment.issued[-1] == ("admin", None, None, None)  # the service's defaults
    bad = client.post("/admin/agents/enrollment-tokens", data={"csrf_token": token, "lifetime_hours": "-3"})
    assert bad.status_code == 422 and b"lifetime: enter hours" in bad.data
    refused = client.post(
        "/admin/agents/enrollment-tokens", data={"csrf_token": token, "agent_id": "leukonet-hub"}
    )
    assert (
        refused.status_code == 422
        and b"Not issued: agent ids starting with leukonet-hub are reserved" in refused.data
    )

    confirm = client.get("/admin/agents/scope-1/revoke")
    assert confirm.status_code == 200 and b"Revoke agent scope-1?" in confirm.data
    assert enrollment.revoked == []  # asking is not doing
    unconfirmed = client.post("/admin/agents/scope-1/revoke", data={"csrf_token": token})
    assert unconfirmed.status_code == 302 and enrollment.revoked == []
    done = client.post(
        "/admin/agents/scope-1/revoke", data={"csrf_token": token, "confirm": "yes"}, follow_redirects=True
    )
    assert b"agent scope-1 revoked" in done.data and enrollment.revoked == [("scope-1", "admin")]
    missing = client.post("/admin/agents/ghost/revoke", data={"csrf_token": token, "confirm": "yes"})
    assert missing.status_code == 404 and b"is not registered" in missing.data
    assert client.get("/admin/agents/ghost/revoke").status_code == 404
