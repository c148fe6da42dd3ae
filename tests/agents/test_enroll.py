"""``leukonet agent enroll`` and ``rotate-credentials`` against a small stdlib hub that speaks the
enrollment contract: success stores ``credentials.json`` (0600) and prints no secret; every refusal
says why and stores nothing; the enrollment token carries no Authorization header and goes to the
configured hub only (no other origin, no redirect); an interrupted rotation is finished later."""

from __future__ import annotations

import http.server
import json
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pytest
from click.testing import CliRunner

from agents.cli import cli
from agents.credentials import credentials_path, next_path, read_credentials
from tests.conftest import free_port, serve_in_thread

ENROLL = "lke_AAAAAAAAAAAA_" + "e" * 43


@dataclass
class Hub:
    """The contract's state: enrollment tokens (token -> binding), live API tokens (-> agent id)."""

    url: str = ""
    enroll_tokens: dict[str, dict[str, str | None]] = field(default_factory=dict)
    api_tokens: dict[str, str] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None  # answer every request with this status
    redirect_to: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, agent_id: str, lab: str) -> dict[str, Any]:
        token = f"lkn_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
        self.api_tokens = {t: a for t, a in self.api_tokens.items() if a != agent_id}  # old one dies
        self.api_tokens[token] = agent_id
        self.passwords[agent_id] = secrets.token_urlsafe(24)
        return {
            "agent_id": agent_id,
            "lab": lab,
            "mqtt": {"username": agent_id, "password": self.passwords[agent_id]},
            "api_token": token,
            "issued_at": datetime.now(timezone.utc).isoformat(),
        }


def error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"code": code, "message": message}}


@contextmanager
def fake_hub(**bindings: dict[str, str | None]) -> Iterator[Hub]:
    hub = Hub(enroll_tokens={ENROLL: {"agent_id": None, "lab": None}, **bindings})

    def answer(path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if hub.fail_with is not None:
            return error(hub.fail_with, "boom", f"the hub fails with {hub.fail_with}")
        if path == "/api/v1/enroll":
            binding = hub.enroll_tokens.pop(body.get("token", ""), None)
            if binding is None:
                return error(401, "invalid_enrollment_token", "unknown, used or expired enrollment token")
            if binding["agent_id"] not in (None, body["agent_id"]) or binding["lab"] not in (
                None,
                body["lab"],
            ):
                return error(403, "enrollment_token_bound", "this token is bound to another agent or lab")
            if body["agent_id"].startswith("leukonet-hub"):
                return error(422, "invalid_agent_id", "agent ids starting with leukonet-hub are reserved")
            return 201, hub.issue(body["agent_id"], body["lab"])
        if path == "/api/v1/agents/self/credentials":
            auth = headers.get("Authorization", "")
            agent = hub.api_tokens.get(auth.removeprefix("Bearer "))
            if agent is None:
                return error(401, "unauthorized", "unknown or revoked token")
            return 200, hub.issue(agent, "haem")
        return error(404, "not_found", path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (stdlib name)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = json.loads(raw or b"{}")
            with hub.lock:
                hub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if hub.redirect_to:
                    self.send_response(307)
                    self.send_header("Location", hub.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, out = answer(self.path, self.headers, body)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
            return

    with serve_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        hub.url = url
        yield hub


def write_config(tmp_path, hub_url: str, agent_id: str = "lab1-scope1", lab: str = "haem", extra: str = ""):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        f"agent_id: {agent_id}\nlab: {lab}\nwatch_dir: {tmp_path}/in\nstate_dir: {tmp_path}/state\n"
        f"backend: fake\nhub:\n  url: {hub_url}\n  timeout_s: 5\n{extra}"
    )
    return cfg


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def stored(tmp_path, agent_id="lab1-scope1", hub_url=None):
    path = credentials_path(tmp_path / "state")
    return read_credentials(path, agent_id, hub_url)[0]


def assert_no_secret(output: str, hub: Hub, *more: str) -> None:
    for secret in [ENROLL, *hub.api_tokens, *hub.passwords.values(), *more]:
        assert secret not in output


# --- enroll -----------------------------------------------------------------------------------------


def test_enroll_stores_the_credentials_0600_and_prints_no_secret(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url)
        res = run("enroll", "--config", str(cfg), "--token", ENROLL, "--hub", hub.url + "/")
        assert res.exit_code == 0, res.output
        path = credentials_path(tmp_path / "state")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        creds = stored(tmp_path, hub_url=hub.url)
        (api_token,) = hub.api_tokens
        assert creds.api_token.get_secret_value() == api_token
        assert creds.mqtt.username == "lab1-scope1"
        assert creds.mqtt.password.get_secret_value() == hub.passwords["lab1-scope1"]
        (request,) = hub.requests
        assert request["path"] == "/api/v1/enroll"
        assert request["body"] == {"token": ENROLL, "agent_id": "lab1-scope1", "lab": "haem"}
        assert "Authorization" not in request["headers"]
    assert_no_secret(res.output, hub)
    assert "enrolled: agent lab1-scope1" in res.output and f"stored in {path} (mode 0600)" in res.output
    assert f"id {api_token.split('_')[1]}" in res.output
    assert f"next: leukonet agent check --config {cfg}" in res.output
    assert not next_path(path).exists()


def test_enroll_takes_the_token_from_the_environment_or_a_file(tmp_path):
    with fake_hub(**{"lke_BBBBBBBBBBBB_" + "f" * 43: {"agent_id": None, "lab": None}}) as hub:
        cfg = write_config(tmp_path, hub.url)
        res = run("enroll", "--config", str(cfg), env={"LEUKONET_ENROLL_TOKEN": ENROLL})
        assert res.exit_code == 0, res.output
        token_file = tmp_path / "token"
        token_file.write_text("lke_BBBBBBBBBBBB_" + "f" * 43 + "\n")
        res = run("enroll", "--config", str(cfg), "--token-file", str(token_file), "--force")
        assert res.exit_code == 0, res.output
        assert [r["body"]["token"][:16] for r in hub.requests] == [ENROLL[:16], "lke_BBBBBBBBBBBB"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no enrollment token"),
        (["--token", "lkn_AAAAAAAAAAAA_apitoken"], "not an enrollment token"),
        (["--token", ENROLL, "--token-file", "/nonexistent"], "give the enrollment token once"),
        (["--token-file", "/nonexistent/token"], "cannot read it"),
    ],
)
def test_a_missing_or_wrong_token_is_a_usage_error(tmp_path, args, message):
    with fake_hub() as hub:
        res = run("enroll", "--config", str(write_config(tmp_path, hub.url)), *args)
    assert res.exit_code == 2 and message in res.output
    assert hub.requests == []


@pytest.mark.parametrize(
    ("binding", "agent_id", "status", "says"),
    [
        (None, "lab1-scope1", 401, "the token is unknown, already used or expired"),
        ({"agent_id": "lab2-scope9", "lab": None}, "lab1-scope1", 403, "bound to another agent id or lab"),
        ({"agent_id": None, "lab": "other lab"}, "lab1-scope1", 403, "bound to another agent id or lab"),
        ({"agent_id": None, "lab": None}, "leukonet-hub-x", 422, "the hub refused agent id 'leukonet-hub-x'"),
    ],
)
def test_a_refused_enrollment_says_why_and_stores_nothing(tmp_path, binding, agent_id, status, says):
    token = "lke_CCCCCCCCCCCC_" + "c" * 43
    with fake_hub(**({token: binding} if binding else {})) as hub:
        cfg = write_config(tmp_path, hub.url, agent_id=agent_id)
        res = run("enroll", "--config", str(cfg), "--token", token)
    assert res.exit_code == 1, res.output
    assert says in res.output and f"HTTP {status}" in res.output and "nothing was stored" in res.output
    assert "the hub says:" in res.output  # the hub's own message is passed on
    assert token not in res.output
    assert list((tmp_path / "state").iterdir()) in ([], [tmp_path / "state" / "credentials.lock"])


@pytest.mark.parametrize(
    ("status", "says"), [(429, "wait a minute"), (503, "try again later"), (500, "try again")]
)
def test_a_throttled_or_failing_hub_is_reported(tmp_path, status, says):
    with fake_hub() as hub:
        hub.fail_with = status
        res = run("enroll", "--config", str(write_config(tmp_path, hub.url)), "--token", ENROLL)
    assert res.exit_code == 1 and says in res.output and f"HTTP {status}" in res.output
    assert not credentials_path(tmp_path / "state").exists()


def test_an_unreachable_hub_is_reported(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    res = run("enroll", "--config", str(write_config(tmp_path, url)), "--token", ENROLL)
    assert res.exit_code == 1
    assert f"cannot reach the hub at {url}" in res.output and "the token was not used" in res.output
    assert ENROLL not in res.output


def test_existing_credentials_are_replaced_only_with_force(tmp_path):
    second = "lke_DDDDDDDDDDDD_" + "d" * 43
    with fake_hub(**{second: {"agent_id": "lab1-scope1", "lab": None}}) as hub:
        cfg = write_config(tmp_path, hub.url)
        assert run("enroll", "--config", str(cfg), "--token", ENROLL).exit_code == 0
        first = stored(tmp_path, hub_url=hub.url)
        res = run("enroll", "--config", str(cfg), "--token", second)
        assert res.exit_code == 1 and "already enrolled" in res.output and "--force" in res.output
        assert len(hub.requests) == 1  # refused before anything was sent
        assert stored(tmp_path, hub_url=hub.url) == first
        res = run("enroll", "--config", str(cfg), "--token", second, "--force")
        assert res.exit_code == 0, res.output
        assert stored(tmp_path, hub_url=hub.url).api_token != first.api_token


def test_the_token_goes_to_the_configured_hub_only(tmp_path):
    with fake_hub() as hub, fake_hub() as elsewhere:
        cfg = write_config(tmp_path, hub.url)
        res = run("enroll", "--config", str(cfg), "--token", ENROLL, "--hub", elsewhere.url)
        assert res.exit_code == 1 and "is not the hub of the agent config" in res.output
        assert "nothing was sent" in res.output
        # the configured hub redirects elsewhere: not followed
        hub.redirect_to = elsewhere.url
        res = run("enroll", "--config", str(cfg), "--token", ENROLL)
        assert res.exit_code == 1, res.output
        assert "HTTP 307 redirecting to" in res.output and "redirects are not followed" in res.output
    assert elsewhere.requests == [] and len(hub.requests) == 1
    assert not credentials_path(tmp_path / "state").exists()


def test_a_netrc_login_is_not_added_to_the_enrollment(tmp_path, monkeypatch):
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with fake_hub() as hub:
        res = run("enroll", "--config", str(write_config(tmp_path, hub.url)), "--token", ENROLL)
        assert res.exit_code == 0, res.output
        res = run("rotate-credentials", "--config", str(write_config(tmp_path, hub.url)))
        assert res.exit_code == 0, res.output
    assert "Authorization" not in hub.requests[0]["headers"]
    assert hub.requests[1]["headers"]["Authorization"].startswith("Bearer lkn_")


# --- rotate-credentials -------------------------------------------------------------------------------


def test_rotation_replaces_the_credentials_and_the_old_token_dies(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url, extra="  token: bootstrap-token-1234\n")
        res = run("enroll", "--config", str(cfg), "--token", ENROLL)
        assert res.exit_code == 0 and "hub.token / mqtt.password are no longer used" in res.output
        first = stored(tmp_path, hub_url=hub.url)
        res = run("rotate-credentials", "--config", str(cfg))
        assert res.exit_code == 0, res.output
        second = stored(tmp_path, hub_url=hub.url)
        request = hub.requests[-1]
        assert request["path"] == "/api/v1/agents/self/credentials" and request["body"] == {}
        assert request["headers"]["Authorization"] == f"Bearer {first.api_token.get_secret_value()}"
        assert second.api_token != first.api_token and second.mqtt.password != first.mqtt.password
        assert list(hub.api_tokens) == [second.api_token.get_secret_value()]
        assert stat.S_IMODE(credentials_path(tmp_path / "state").stat().st_mode) == 0o600
        assert "rotated: agent lab1-scope1" in res.output
        assert_no_secret(
            res.output, hub, first.api_token.get_secret_value(), first.mqtt.password.get_secret_value()
        )
        assert run("rotate-credentials", "--config", str(cfg)).exit_code == 0  # the new token rotates too


def test_rotation_with_a_dead_token_says_to_re_enroll_and_changes_nothing(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url)
        assert run("enroll", "--config", str(cfg), "--token", ENROLL).exit_code == 0
        before = credentials_path(tmp_path / "state").read_bytes()
        hub.api_tokens.clear()  # revoked, or rotated by another copy of this agent
        res = run("rotate-credentials", "--config", str(cfg))
    assert res.exit_code == 1 and "HTTP 401" in res.output and "leukonet agent enroll" in res.output
    assert "the stored credentials are unchanged" in res.output
    assert credentials_path(tmp_path / "state").read_bytes() == before


def test_rotation_needs_an_enrolled_agent(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url, extra="  token: bootstrap-token-1234\n")
        res = run("rotate-credentials", "--config", str(cfg))
    assert res.exit_code == 1 and "not enrolled" in res.output and hub.requests == []


def test_an_interrupted_rotation_is_finished_by_the_next_one(tmp_path, monkeypatch):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url)
        assert run("enroll", "--config", str(cfg), "--token", ENROLL).exit_code == 0

        def no_rename(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr("agents.credentials.files.os.replace", no_rename)
        res = run("rotate-credentials", "--config", str(cfg))
        monkeypatch.undo()
        assert res.exit_code == 1
        staged = next_path(credentials_path(tmp_path / "state"))
        assert "the hub completed the rotation" in res.output and f"they are in {staged}" in res.output
        assert stat.S_IMODE(staged.stat().st_mode) == 0o600
        (live,) = hub.api_tokens  # only the new token works at the hub now
        sent = len(hub.requests)
        res = run("rotate-credentials", "--config", str(cfg))
        assert res.exit_code == 0, res.output
        assert "recovered an interrupted write" in res.output and len(hub.requests) == sent
        assert stored(tmp_path, hub_url=hub.url).api_token.get_secret_value() == live
        assert not staged.exists()
        assert run("rotate-credentials", "--config", str(cfg)).exit_code == 0


def test_a_half_written_next_file_is_dropped(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url)
        assert run("enroll", "--config", str(cfg), "--token", ENROLL).exit_code == 0
        staged = next_path(credentials_path(tmp_path / "state"))
        staged.write_text('{"schema_version": 1, "agent_id": "lab1-')
        staged.chmod(0o600)
        res = run("rotate-credentials", "--config", str(cfg))
        assert res.exit_code == 0, res.output
        assert "rotated" in res.output and not staged.exists()


# --- check ------------------------------------------------------------------------------------------


def test_check_reports_where_the_credentials_come_from(tmp_path):
    with fake_hub() as hub:
        cfg = write_config(tmp_path, hub.url, extra=f"mqtt:\n  port: {free_port()}\n")
        res = run("check", "--config", str(cfg))
        assert "warn credentials: none: not enrolled" in res.output
        assert "FAIL hub token: none" in res.output
        cfg = write_config(
            tmp_path, hub.url, extra=f"  token: bootstrap-token-1234\nmqtt:\n  port: {free_port()}\n"
        )
        res = run("check", "--config", str(cfg))
        assert (
            "ok   credentials: config bootstrap (hub.token from the agent config; not enrolled)" in res.output
        )
        assert run("enroll", "--config", str(cfg), "--token", ENROLL).exit_code == 0
        res = run("check", "--config", str(cfg))
        assert "ok   credentials: enrolled as MQTT user lab1-scope1, issued 20" in res.output
        credentials_path(tmp_path / "state").chmod(0o644)
        res = run("check", "--config", str(cfg))
        assert "FAIL credentials: credentials file" in res.output and "chmod 600" in res.output
    assert_no_secret(res.output, hub)
