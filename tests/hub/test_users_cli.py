"""``leukonet hub users ...`` and ``leukonet hub tokens ...`` with click's CliRunner, on the same
database as a running app, so each change is checked where it matters: the dashboard login and the
API. Audit entries name ``cli:<os user>``."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from hub.cli import cli as hub_cli
from hub.db.models import AuditEntry
from hub.extensions import hub_ext
from tests.hub.conftest import ADMIN_PASSWORD, USER_PASSWORD, add_user, login

ACTOR = f"cli:{getpass.getuser()}"


@pytest.fixture
def hub(app, tmp_path: Path):
    """Run ``leukonet hub ARGS`` against ``app``'s database; returns the click result."""
    config = hub_ext.for_app(app).config
    path = tmp_path / "hub-cli.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(config.data_dir),
                "database_url": config.database_url,
                "secret_key": config.require_secret_key(),
            }
        )
    )

    def run(*args: str, input: str | None = None):
        return CliRunner().invoke(hub_cli, [*args, "--config", str(path)], input=input)

    return run


def actors(app, action: str) -> list[str]:
    with hub_ext.for_app(app).db.session() as s:
        return [e.actor for e in s.scalars(select(AuditEntry).where(AuditEntry.action == action))]


def test_users_add_with_a_prompt_then_the_person_signs_in(app, client, hub):
    r = hub("users", "add", "alice", "--role", "operator", input=f"{USER_PASSWORD}\n{USER_PASSWORD}\n")
    assert r.exit_code == 0, r.output
    assert "user alice added with role operator" in r.output and USER_PASSWORD not in r.output
    assert login(client, "alice", USER_PASSWORD).status_code == 302
    assert actors(app, "user.create") == ["config", ACTOR]  # the first admin came from the config

    r = hub(
        "users",
        "add",
        "bob",
        "--role",
        "viewer",
        input=f"{USER_PASSWORD}\nsomething else\n{USER_PASSWORD}\n{USER_PASSWORD}\n",
    )
    assert r.exit_code == 0 and "do not match" in r.output  # click asks again


def test_users_add_refusals_name_the_input(hub):
    r = hub("users", "add", "alice", "--role", "trainer", input="x\n")
    assert r.exit_code == 2 and "'trainer' is not one of" in r.output
    r = hub("users", "add", "bad name", "--role", "viewer")
    assert r.exit_code == 2 and "NAME" in r.output and "letters, digits" in r.output
    r = hub("users", "add", "alice", "--role", "viewer", "--password-stdin", input="short\n")
    assert r.exit_code == 1 and "adding user alice: password must be at least 12 characters" in r.output
    assert "short" not in r.output.split("characters", 1)[1]
    r = hub("users", "add", "alice", "--role", "viewer", "--password-stdin", input="")
    assert r.exit_code == 2 and "no password line" in r.output
    r = hub("users", "add", "Admin", "--role", "viewer", "--password-stdin", input=f"{USER_PASSWORD}\n")
    assert r.exit_code == 1 and "user 'admin' already exists" in r.output


def test_users_list_disable_enable_unlock(app, client, hub):
    add_user(app, "alice", "reviewer")
    r = hub("users", "list", "--json")
    assert r.exit_code == 0, r.output
    rows = {u["username"]: u for u in json.loads(r.output)}
    assert (rows["admin"]["role"], rows["alice"]["role"], rows["alice"]["state"]) == (
        "admin",
        "reviewer",
        "active",
    )
    assert "password" not in r.output

    assert login(client, "alice", USER_PASSWORD).status_code == 302
    r = hub("users", "disable", "alice")
    assert r.exit_code == 0 and "1 session(s) ended" in r.output
    assert client.get("/").status_code == 302
    assert "alice\treviewer\tdisabled" in hub("users", "list").output
    r = hub("users", "disable", "admin")
    assert r.exit_code == 1 and "last enabled admin" in r.output
    hub("users", "enable", "alice")
    for _ in range(hub_ext.for_app(app).config.login.max_failures):
        login(app.test_client(), "alice", "wrong")
    assert "alice\treviewer\tlocked until" in hub("users", "list").output
    assert hub("users", "unlock", "alice").exit_code == 0
    assert login(client, "alice", USER_PASSWORD).status_code == 302
    r = hub("users", "enable", "ghost")
    assert r.exit_code == 1 and "there is no user 'ghost'; see `leukonet hub users list`" in r.output
    for action in ("user.disable", "user.enable", "user.unlock"):
        assert actors(app, action) == [ACTOR], action


def test_reset_password_ends_sessions_and_tokens(app, client, hub):
    assert login(client).status_code == 302
    r = hub("tokens", "create", "--name", "ops", "--role", "operator", "--user", "admin")
    value = r.output.strip().splitlines()[-1]
    assert (
        app.test_client().get("/api/v1/agents", headers={"Authorization": f"Bearer {value}"}).status_code
        == 200
    )
    new = "the admin's new password"
    r = hub("users", "reset-password", "admin", "--password-stdin", input=f"{new}\n")
    assert r.exit_code == 0 and "1 session(s) ended, 1 token(s) revoked" in r.output, r.output
    assert client.get("/").status_code == 302
    assert (
        app.test_client().get("/api/v1/agents", headers={"Authorization": f"Bearer {value}"}).status_code
        == 401
    )
    assert login(client, "admin", ADMIN_PASSWORD).status_code == 401
    assert login(client, "admin", new).status_code == 302
    r = hub("users", "reset-password", "ghost", "--password-stdin", input=f"{new}\n")
    assert r.exit_code == 1 and "there is no user 'ghost'" in r.output


def test_tokens_create_list_revoke(app, hub):
    api = app.test_client()
    r = hub("tokens", "create", "--name", "gpu-trainer", "--role", "trainer", "--expires-days", "30")
    assert r.exit_code == 0, r.output
    assert "copy the value now, it is not shown again" in r.output
    value = r.output.strip().splitlines()[-1]
    assert value.startswith("lkn_")
    token_id = value.split("_")[1]
    auth = {"Authorization": f"Bearer {value}"}
    assert api.post("/api/v1/training-jobs/claim", json={"worker": "w"}, headers=auth).status_code == 204

    listed = json.loads(hub("tokens", "list", "--json").output)
    [row] = [t for t in listed if t["token_id"] == token_id]
    assert (row["name"], row["role"], row["user"]) == ("gpu-trainer", "trainer", None)
    assert row["expires_at"] and row["last_used_at"]
    assert value not in hub("tokens", "list").output and token_id in hub("tokens", "list").output

    add_user(app, "vera", "viewer")
    r = hub("tokens", "create", "--name", "v", "--role", "operator", "--user", "vera")
    assert r.exit_code == 1 and "vera has role viewer and may hold only viewer tokens" in r.output
    r = hub("tokens", "create", "--name", "v", "--role", "viewer", "--user", "vera")
    assert r.exit_code == 0
    assert [t["user"] for t in json.loads(hub("tokens", "list", "--json").output)][0] == "vera"
    r = hub("tokens", "create", "--name", "", "--role", "viewer")
    assert r.exit_code == 2 and "--name" in r.output

    r = hub("tokens", "revoke", token_id)
    assert r.exit_code == 0 and f"token {token_id} revoked" in r.output
    assert api.get("/api/v1/agents", headers=auth).status_code == 401
    r = hub("tokens", "revoke", token_id)
    assert r.exit_code == 1 and "no live token" in r.output and "leukonet hub tokens list" in r.output
    assert actors(app, "token.revoke") == [ACTOR]
    assert set(actors(app, "token.create")) == {ACTOR}
