"""People in a real browser (headless Chromium driven by Playwright): a viewer, a reviewer, an
operator and an admin each sign in and see (and can do) only what their role allows; the admin adds
a user through the Users page; wrong passwords lock an account; and a session cookie saved before
signing out is refused when a new browser context presents it afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.hub.conftest import ADMIN_PASSWORD, USER_PASSWORD, add_user, auth, browser_login, serve_app
from tests.hub.test_web_security import csp_violations

pytestmark = pytest.mark.browser


@pytest.fixture
def live(env) -> Iterator[str]:
    with serve_app(env.app) as url:
        yield url


@pytest.fixture
def browser(page) -> Any:
    return page.context.browser


def sign_in(browser: Any, live: str, username: str, password: str = USER_PASSWORD) -> Any:
    """A new browser context signed in as ``username``; returns its page (on the fleet page)."""
    page = browser.new_context().new_page()
    page.goto(live + "/login")
    browser_login(page, username, password)
    page.wait_for_selector("#agents")
    return page


def status_of(page: Any, url: str) -> int:
    response = page.goto(url)
    assert response is not None
    return int(response.status)


def nav_links(page: Any) -> set[str]:
    return {
        a for a in ("nav-users", "nav-tokens", "nav-agents", "nav-account") if page.locator(f"#{a}").count()
    }


def test_each_role_sees_and_does_only_what_it_may(env, live, browser):
    env.agents(2)
    rollout = env.start(stages=[100])
    rid = rollout["rollout_id"]
    for role in ("viewer", "reviewer", "operator"):
        add_user(env.app, role, role)

    for role in ("viewer", "reviewer"):
        page = sign_in(browser, live, role)
        violations = csp_violations(page)
        assert nav_links(page) == {"nav-account"}
        assert f"{role} ({role})" in page.inner_text("#nav-account")
        page.goto(f"{live}/rollouts/{rid}")
        page.wait_for_selector("#groups tbody tr")  # reading is allowed
        assert page.locator("#rollout-actions").count() == 0 and page.locator("#action-pause").count() == 0
        page.goto(f"{live}/training")
        page.wait_for_selector("#jobs")
        assert page.locator("#queue-form").count() == 0
        for path in ("/admin/users", "/admin/tokens", "/admin/agents"):
            assert status_of(page, live + path) == 403, (role, path)
        assert status_of(page, live + "/account") == 200
        assert violations == []
        page.context.close()

    page = sign_in(browser, live, "operator")
    assert nav_links(page) == {"nav-account"}
    page.goto(f"{live}/training")
    assert page.locator("#queue-form").count() == 1
    page.goto(f"{live}/rollouts/{rid}")
    page.click("#action-pause")
    page.wait_for_selector(".notice")
    assert "pause: done" in page.inner_text(".notice")
    entry = env.client.get("/api/v1/audit", headers=auth("admin")).json["items"][0]
    assert (entry["actor"], entry["action"]) == ("operator", "rollout.pause")
    for path in ("/admin/users", "/admin/tokens", "/admin/agents"):
        assert status_of(page, live + path) == 403, path
    page.context.close()

    page = sign_in(browser, live, "admin", ADMIN_PASSWORD)
    violations = csp_violations(page)
    assert nav_links(page) == {"nav-users", "nav-tokens", "nav-agents", "nav-account"}
    page.click("#nav-users")
    page.fill("#new-username", "nina")
    page.select_option("#new-role", "reviewer")
    page.fill("#new-password", "nina's first password")
    page.fill("#new-confirm", "nina's first password")
    page.click("#add-user-submit")
    page.wait_for_selector(".notice")
    assert "user nina added with role reviewer" in page.inner_text(".notice")
    assert "reviewer" in page.inner_text('#users tr[data-user="nina"]')
    for path in ("/admin/tokens", "/admin/agents"):
        assert status_of(page, live + path) == 200, path
    assert violations == []
    page.context.close()

    nina = sign_in(browser, live, "nina", "nina's first password")
    assert "nina (reviewer)" in nina.inner_text("#nav-account")
    nina.context.close()


def test_wrong_passwords_lock_the_account(env, live, browser):
    add_user(env.app, "alice", "viewer")
    page = browser.new_context().new_page()
    page.goto(live + "/login")
    for i in range(env.services.config.login.max_failures):
        browser_login(page, "alice", f"wrong password {i}")
        assert page.inner_text("#login-error") == "Wrong user name or password."
    browser_login(page, "alice", USER_PASSWORD)
    message = page.inner_text("#login-error")
    assert "This account is locked after too many wrong passwords, until" in message
    assert "/login" in page.url and page.locator("#agents").count() == 0
    page.context.close()


def test_a_cookie_saved_before_signing_out_is_refused_afterwards(env, live, browser):
    page = sign_in(browser, live, "admin", ADMIN_PASSWORD)
    saved = page.context.cookies()
    assert [c["name"] for c in saved] == ["session"] and saved[0]["httpOnly"]

    # control: the saved cookie works in another context while the session lives
    copy = browser.new_context()
    copy.add_cookies(saved)
    other = copy.new_page()
    other.goto(live + "/")
    assert other.url == live + "/" and other.locator("#agents").count() == 1
    copy.close()

    page.click("#sign-out")
    page.wait_for_selector("#login-form")
    page.context.close()

    replay = browser.new_context()
    replay.add_cookies(saved)
    again = replay.new_page()
    again.goto(live + "/")
    assert "/login" in again.url and again.locator("#agents").count() == 0
    api = again.request.get(live + "/api/v1/agents")
    assert api.status == 401
    replay.close()
