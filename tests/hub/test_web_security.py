"""Web hardening: security headers on every response (API, dashboard, /healthz, errors, static
files), a versionless ``Server`` header from ``hub serve``'s web server, session cookie flags, the
dashboard (admin pages included) working in a real browser under the Content-Security-Policy, and
secrets refused at config load when they are short or are the placeholders docker/.env.example ships."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import expect

from hub.app import CONTENT_SECURITY_POLICY, close_app
from hub.cli import cli as hub_cli
from hub.config import (
    PASSWORD_MIN_CHARS,
    PLACEHOLDER_SECRETS,
    SECRET_KEY_MIN_CHARS,
    TOKEN_MIN_CHARS,
    HubConfig,
)
from hub.ingest.writer import IngestWriter
from hub.server import make_web_server
from shared.config import ConfigError
from shared.schemas import AgentState, AgentStatus
from tests.conftest import serve_in_thread
from tests.hub.conftest import (
    TOKENS,
    Keys,
    auth,
    browser_login,
    hub_config,
    migrated_app,
    serve_app,
)
from tests.hub.conftest import login as form_login

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "docker" / ".env.example"
EXPECTED_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
UPDATED = re.compile(r"^Updated ")  # what the page scripts show after a refresh from the API
STRONG = "s3cret-" + "x" * 40  # long enough for every rule


def assert_security_headers(headers: Any, what: str) -> None:
    for name, value in EXPECTED_HEADERS.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}"


def login(client: FlaskClient) -> Any:
    r = form_login(client)
    assert r.status_code == 302
    return r


def csp_violations(page: Any) -> list[str]:
    """Collect the console messages Chromium logs when the page's Content-Security-Policy blocks
    something (an inline script or style, a foreign source); the list fills as the page runs."""
    found: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            found.append(message.text)

    page.on("console", on_console)
    return found


# --- headers ----------------------------------------------------------------------------------


def test_the_policy_allows_no_inline_script_or_style():
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'" and directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_security_headers_on_api_dashboard_health_static_and_errors(app, client):
    def boom() -> str:
        raise RuntimeError("a bug in a route")

    app.add_url_rule("/boom-for-test", "boom_for_test", boom)
    api = client.get("/api/v1/agents", headers=auth("admin"))
    assert api.status_code == 200 and api.is_json
    assert_security_headers(api.headers, "API response")
    assert_security_headers(client.get("/healthz").headers, "/healthz")
    assert_security_headers(client.get("/login").headers, "login page")
    with client.get("/static/style.css") as css:
        assert css.status_code == 200
        assert_security_headers(css.headers, "static file")
    assert_security_headers(client.get("/api/docs").headers, "API reference page")

    unauthorized = client.get("/api/v1/agents")
    assert unauthorized.status_code == 401 and unauthorized.is_json
    assert_security_headers(unauthorized.headers, "API 401")
    missing = client.get("/api/v1/models/nope/1.0.0", headers=auth("admin"))
    assert missing.status_code == 404 and missing.is_json
    assert_security_headers(missing.headers, "API 404")
    assert_security_headers(client.get("/").headers, "redirect to the login page")

    login(client)
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert_security_headers(page.headers, "dashboard page")
    html_404 = client.get("/agents/ghost")
    assert html_404.status_code == 404 and html_404.mimetype == "text/html"
    assert_security_headers(html_404.headers, "dashboard 404")
    assert_security_headers(form_login(client, password="wrong").headers, "login 401")
    assert_security_headers(client.post("/login", data={}).headers, "login without CSRF token (400)")
    crash = client.get("/boom-for-test")
    assert crash.status_code == 500 and crash.json["error"]["code"] == "internal_error"
    assert_security_headers(crash.headers, "unexpected error (500)")


def test_the_served_pages_have_no_inline_script_style_or_handlers(client):
    login(client)
    pages = ("/login", "/", "/models", "/rollouts", "/training", "/api/docs", "/account")
    for path in (*pages, "/admin/users", "/admin/tokens", "/admin/agents"):
        html = client.get(path).data.decode()
        assert "<script>" not in html and "<style" not in html and " style=" not in html, path
        assert " onclick=" not in html and " onload=" not in html and "javascript:" not in html, path
        for tag in html.split("<script")[1:]:
            assert ' src="/static/' in tag.split(">", 1)[0], f"{path}: a script without src"


def test_server_header_of_hub_serve_names_no_version(app):
    server = make_web_server("127.0.0.1", 0, app, timeout_s=5)
    with serve_in_thread(server) as url:
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as ok:
            assert ok.headers["Server"] == "leukonet"
            assert_security_headers(ok.headers, "/healthz over HTTP")
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(f"{url}/api/v1/agents", timeout=10)
        assert error.value.code == 401 and error.value.headers["Server"] == "leukonet"
        error.value.close()
    # the Flask test client adds no Server header at all; only the real server would
    assert "Server" not in app.test_client().get("/healthz").headers


@pytest.mark.parametrize(
    ("public_url", "setting", "secure"),
    [
        ("http://hub.test:8080", None, False),
        ("https://hub.test", None, True),
        ("http://hub.test:8080", True, True),  # TLS ends at a proxy that talks http to the hub
        ("https://hub.test", False, False),
    ],
)
def test_session_cookie_flags(
    tmp_path: Path, keys: Keys, public_url: str, setting: bool | None, secure: bool
):
    login_section = {} if setting is None else {"secure_cookies": setting}
    application = migrated_app(hub_config(tmp_path, keys, public_url=public_url, login=login_section))
    try:
        cookie = login(application.test_client()).headers["Set-Cookie"]
    finally:
        close_app(application)
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert "httponly" in attributes and attributes["samesite"] == "SameSite=Lax"
    assert ("secure" in attributes) is secure
    assert "remember_token" not in cookie  # no "remember me" cookie
    assert (application.config["REMEMBER_COOKIE_SECURE"], application.config["REMEMBER_COOKIE_HTTPONLY"]) == (
        secure,
        True,
    )


# --- the dashboard in a browser under the policy -----------------------------------------------


@pytest.fixture
def live_hub(app: Flask) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


@pytest.mark.browser
def test_every_page_works_in_chromium_without_a_csp_violation(live_hub, page, db):
    IngestWriter(db).write([AgentStatus(agent_id="scope-1", state=AgentState.ONLINE, lab="Lab A")])
    violations = csp_violations(page)
    page.goto(live_hub + "/login")
    # style.css (style-src 'self') applies: the brand has the accent colour
    assert page.eval_on_selector(".brand", "e => getComputedStyle(e).color") == "rgb(139, 30, 63)"
    browser_login(page)
    page.wait_for_selector("#agents tbody tr")
    # dashboard.js (script-src 'self') runs: its refresh reports back
    expect(page.locator("#refresh-status")).to_have_text(UPDATED, timeout=15000)
    pages = ("/models", "/rollouts", "/agents/scope-1", "/api/docs", "/account", "/admin/users")
    for path in (*pages, "/admin/tokens", "/admin/agents", "/admin/agents/scope-1/revoke"):
        page.goto(live_hub + path)  # returns once the page and its script and stylesheet have loaded
        assert page.url == live_hub + path
    page.goto(live_hub + "/training")
    expect(page.locator("#refresh-status")).to_have_text(UPDATED, timeout=15000)
    assert violations == []

    # the listener does catch a violation: an injected inline script is blocked and reported
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text, timeout=10000):
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.injected = true'; document.body.appendChild(s); }"
        )
    assert page.evaluate("() => window.injected === undefined")
    assert violations and "script-src" in violations[0]


# --- secrets ----------------------------------------------------------------------------------


def env_example() -> dict[str, str]:
    """docker/.env.example as ``{variable: value}`` (comments and blank lines left out)."""
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value
    return pairs


def test_the_placeholder_list_is_the_env_example_values():
    values: set[str] = set()
    for value in env_example().values():
        if value.startswith("["):  # LEUKONET_HUB_TOKENS: a JSON list of {name, token, role}
            values |= {t["token"] for t in json.loads(value)}
        else:
            values.add(value)
    assert values == PLACEHOLDER_SECRETS


def test_the_env_example_as_is_cannot_start_a_hub(tmp_path, monkeypatch):
    hub_env = {k: v for k, v in env_example().items() if k.startswith("LEUKONET_HUB_")}
    secrets_ = {"LEUKONET_HUB_SECRET_KEY", "LEUKONET_HUB_ADMIN_PASSWORD", "LEUKONET_HUB_TOKENS"}
    assert secrets_ <= set(hub_env)
    for name, value in hub_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        HubConfig.load(None, data_dir=tmp_path)
    message = str(refused.value)
    for field in ("secret_key", "admin_password", "tokens.0.token", "tokens.1.token", "mqtt.password"):
        assert f"\n  {field}: " in message, field
    assert "placeholder from docker/.env.example" in message
    for command in ("check", "serve"):
        r = CliRunner().invoke(hub_cli, [command], env=hub_env)
        assert r.exit_code == 1, (command, r.output)
        assert "secret_key" in r.output and "placeholder from docker/.env.example" in r.output, command


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"secret_key": "change-me-to-64-random-characters"}, "secret_key"),
        ({"admin_password": "change-me"}, "admin_password"),
        (
            {"tokens": [{"name": "ops", "token": "change-me-admin-token-32chars", "role": "admin"}]},
            "tokens.0.token",
        ),
        ({"mqtt": {"password": "change-me"}}, "mqtt.password"),
        ({"database_url": "postgresql+psycopg://leukonet:change-me@postgres/leukonet"}, "database_url"),
    ],
)
def test_placeholders_are_refused_naming_the_field(tmp_path, values, field):
    with pytest.raises(ConfigError, match=rf"\n  {field}: .*placeholder from docker/\.env\.example"):
        HubConfig.load(None, data_dir=tmp_path, **values)


@pytest.mark.parametrize(
    ("field", "minimum"),
    [("secret_key", SECRET_KEY_MIN_CHARS), ("admin_password", PASSWORD_MIN_CHARS)],
)
def test_short_secrets_are_refused_naming_the_field_and_minimum(tmp_path, field, minimum):
    assert (SECRET_KEY_MIN_CHARS, PASSWORD_MIN_CHARS) == (32, 12)
    for short in ("", "x" * (minimum - 1)):
        rule = rf"\n  {field}: .*at least {minimum} characters, got {len(short)};"
        with pytest.raises(ConfigError, match=rule):
            HubConfig.load(None, data_dir=tmp_path, **{field: short})
    cfg = HubConfig.load(None, data_dir=tmp_path, **{field: "y" * minimum})
    assert getattr(cfg, field).get_secret_value() == "y" * minimum


def test_short_tokens_are_refused_and_the_test_secrets_pass(tmp_path, keys):
    short = {"name": "ci", "token": "z" * (TOKEN_MIN_CHARS - 1), "role": "trainer"}
    with pytest.raises(ConfigError, match=rf"tokens\.0\.token: .*at least {TOKEN_MIN_CHARS} characters"):
        HubConfig.load(None, data_dir=tmp_path, tokens=[short])
    # the shared test config (tests/hub/conftest.py) satisfies every rule
    cfg = hub_config(tmp_path, keys)
    assert cfg.require_secret_key() and cfg.admin_password is not None
    assert all(len(t) >= TOKEN_MIN_CHARS for t in TOKENS.values())
    assert HubConfig.load(None, data_dir=tmp_path, secret_key=STRONG, admin_password=STRONG)
