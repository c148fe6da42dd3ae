"""Signing in and out of the dashboard through Flask's test client: CSRF on the form, one message for
a wrong name or password, lockout and per-address 429, disabled users, sessions that end for good
(a cookie saved before logout or a password change is refused afterwards, also by the API), expiry,
and a property test: no user name or password makes the login form answer 5xx."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from hub.app import close_app
from hub.db.models import AuditEntry, WebSession
from hub.extensions import hub_ext
from hub.identity.users import disable_user, get_user
from shared.clock import utcnow
from tests.hub.conftest import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    USER_PASSWORD,
    add_user,
    csrf,
    hub_config,
    login,
    login_as,
    migrated_app,
)

WRONG = b"Wrong user name or password."


def session_cookie(client) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    return cookie.value


def signed_in(client) -> bool:
    r = client.get("/")
    return r.status_code == 200


@pytest.fixture
def strict_app(tmp_path: Path, keys):
    """An app with small limits: 3 wrong passwords lock an account, 5 failures throttle an address."""
    config = hub_config(
        tmp_path,
        keys,
        login={"max_failures": 3, "lockout_s": 600, "max_failures_per_address": 5, "address_window_s": 600},
    )
    app = migrated_app(config)
    app.config["TESTING"] = True
    yield app
    close_app(app)


def test_the_form_needs_its_csrf_token(client):
    r = client.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 400 and not signed_in(client)
    assert login(client).status_code == 302 and signed_in(client)


def test_a_wrong_name_and_a_wrong_password_read_the_same(app, client):
    add_user(app, "alice", "viewer")
    unknown = login(client, "nobody", USER_PASSWORD)
    wrong = login(client, "alice", "not her password")
    assert unknown.status_code == wrong.status_code == 401
    assert WRONG in unknown.data and WRONG in wrong.data
    assert unknown.data.replace(b"nobody", b"alice") == wrong.data  # the same page but the name typed


def test_lockout_after_n_failures_is_told_only_with_the_right_password(strict_app, caplog):
    caplog.set_level("INFO")
    client = strict_app.test_client()
    add_user(strict_app, "alice", "operator")
    for _ in range(3):
        assert login(client, "alice", "wrong password").status_code == 401
    wrong = login(client, "alice", "still wrong")
    assert wrong.status_code == 401 and WRONG in wrong.data  # a stranger cannot tell it is locked
    locked = login(client, "alice", USER_PASSWORD)
    assert locked.status_code == 403 and b"locked after too many wrong passwords, until" in locked.data
    assert not signed_in(client)
    with hub_ext.for_app(strict_app).db.session() as s:
        entries = s.scalars(select(AuditEntry).where(AuditEntry.actor == "alice")).all()
    assert [e.action for e in entries].count("login.locked") == 1
    typed = ("wrong password", "still wrong", USER_PASSWORD)
    assert not [p for p in typed for e in entries if p in str(e.details)]  # no password in the audit log
    assert "account_locked user=alice" in caplog.text and not [p for p in typed if p in caplog.text]


def test_too_many_failures_from_one_address_get_429(strict_app):
    client = strict_app.test_client()
    for i in range(5):
        assert login(client, f"guess{i}", "wrong").status_code == 401
    r = login(client, "admin", ADMIN_PASSWORD)  # even the right password: nothing is checked
    assert r.status_code == 429
    assert b"Too many failed sign-ins from your address" in r.data
    assert 500 < int(r.headers["Retry-After"]) <= 601
    other = strict_app.test_client()
    other.environ_base["REMOTE_ADDR"] = "10.9.9.9"
    assert login(other, "admin", ADMIN_PASSWORD).status_code == 302


def test_disabled_users_cannot_sign_in_and_their_sessions_end(app, client):
    add_user(app, "alice", "viewer")
    login_as(app, client, "alice")
    with hub_ext.for_app(app).db.transaction() as s:
        disable_user(s, get_user(s, "alice"), "admin", utcnow())
    assert client.get("/").status_code == 302  # the open session ended at once
    assert client.get("/api/v1/agents").status_code == 401
    assert login(client, "alice", "wrong").status_code == 401
    r = login(client, "alice", USER_PASSWORD)
    assert r.status_code == 403 and b"This account is disabled" in r.data


def test_a_cookie_saved_before_logout_is_refused_afterwards(app, client):
    login(client)
    saved = session_cookie(client)
    token = csrf(client.get("/").data.decode())
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    replay = app.test_client()
    replay.set_cookie("session", saved, domain="localhost")
    assert replay.get("/").status_code == 302
    assert replay.get("/api/v1/agents").status_code == 401
    with hub_ext.for_app(app).db.session() as s:
        assert s.scalars(select(WebSession)).all() == []


def test_a_cookie_is_only_as_good_as_its_session_row(app, client):
    """Control for the test above: the same replay works while the session lives."""
    login(client)
    replay = app.test_client()
    replay.set_cookie("session", session_cookie(client), domain="localhost")
    assert replay.get("/").status_code == 200


def test_sessions_end_login_session_hours_after_login(app, client):
    login(client)
    assert signed_in(client)
    hours = hub_ext.for_app(app).config.login.session_hours
    with hub_ext.for_app(app).db.transaction() as s:
        s.execute(update(WebSession).values(created_at=utcnow() - timedelta(hours=hours, seconds=1)))
    assert client.get("/").status_code == 302
    assert client.get("/api/v1/agents").status_code == 401


def test_a_password_change_ends_the_other_sessions_and_keeps_this_one(app):
    add_user(app, "alice", "operator")
    here, elsewhere = app.test_client(), app.test_client()
    login_as(app, here, "alice")
    login_as(app, elsewhere, "alice")
    before = session_cookie(here)
    page = here.get("/account").data.decode()
    r = here.post(
        "/account/password",
        data={
            "csrf_token": csrf(page),
            "current_password": USER_PASSWORD,
            "new_password": "alice's new password",
            "confirm_password": "alice's new password",
        },
    )
    assert r.status_code == 302
    assert "1 other session(s) were signed out" in here.get("/account").data.decode()
    assert signed_in(here) and not signed_in(elsewhere)
    replay = app.test_client()
    replay.set_cookie("session", before, domain="localhost")
    assert not signed_in(replay)  # this browser's old cookie too: it got a new session
    assert login(elsewhere, "alice", USER_PASSWORD).status_code == 401
    assert login(elsewhere, "alice", "alice's new password").status_code == 302


def test_the_login_page_helps_when_no_user_exists(app, client):
    assert b'id="no-users"' not in client.get("/login").data
    with hub_ext.for_app(app).db.transaction() as s:
        s.delete(get_user(s, "admin"))
    page = client.get("/login").data
    assert b'id="no-users"' in page and b"leukonet hub users add NAME --role admin" in page


@pytest.fixture
def roomy_app(tmp_path_factory, keys):
    config = hub_config(
        tmp_path_factory.mktemp("roomy"),
        keys,
        login={"max_failures_per_address": 10_000, "max_failures": 100},
    )
    app = migrated_app(config)
    yield app
    close_app(app)


# Each example costs an argon2 verification (a dummy one for unknown names): 20 generated ones plus
# the edges every run must try (nothing, a NUL, the longest, the admin's name with wrong passwords).
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(username=st.text(max_size=80), password=st.text(max_size=200), next_=st.text(max_size=40))
@example(username="", password="", next_="")
@example(username="\x00", password="\x00", next_="\x00")
@example(username="é" * 80, password="\U0001f600" * 200, next_="//evil.example/" + "x" * 25)
@example(username=ADMIN_USER, password="", next_="/")
@example(username=ADMIN_USER, password=ADMIN_PASSWORD + " ", next_="/")
def test_no_user_name_or_password_makes_the_form_fail(roomy_app, username, password, next_):
    client = roomy_app.test_client()
    token = csrf(client.get("/login").data.decode())
    form = {"csrf_token": token, "username": username, "password": password}
    r = client.post("/login", query_string={"next": next_}, data=form)
    assert r.status_code in (401, 403), r.status_code


@settings(max_examples=300, deadline=None)
@given(target=st.one_of(st.text(max_size=40), st.from_regex(r"\A[/\\]{1,3}[a-z.:@]{0,12}(/.*)?\Z")))
def test_next_never_leaves_the_site(target):
    from flask import Flask

    from hub.web.login import safe_next

    app = Flask(__name__)
    app.add_url_rule("/", "web.index", lambda: "")
    with app.test_request_context():
        where = safe_next(target)
    assert where.startswith("/") and not where.startswith("//") and "\\" not in where
    assert urlsplit(where).netloc == "" and urlsplit(where).scheme == ""
