"""Signing in and out of the dashboard (blueprint ``auth``) and the Flask-Login wiring.

``POST /login`` takes a user name and password (CSRF-checked) and asks
:func:`hub.identity.throttle.check_login`; on success it starts a database session
(:mod:`hub.identity.sessions`) whose random id is all the cookie carries. Answers: 302 to ``next``
(same-site paths only), 401 "wrong user name or password", 403 locked or disabled (only after the
right password), 429 with ``Retry-After`` when the address is throttled. ``POST /logout`` deletes
the session row, so a copy of the cookie is worthless afterwards. There is no "remember me".
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_login import LoginManager, login_user, logout_user
from sqlalchemy import func, select
from werkzeug.wrappers import Response

from hub.auth import session_user
from hub.db.models import User
from hub.extensions import hub_ext
from hub.identity.sessions import SessionUser, end_session, load_session, prune_sessions, start_session
from hub.identity.throttle import LoginOutcome, check_login
from hub.roles import Role
from hub.web.guards import check_csrf
from shared.clock import utcnow
from shared.logs import kv

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, template_folder="../templates")
login_manager = LoginManager()
WRONG = "Wrong user name or password."


@login_manager.user_loader
def _load_user(session_id: str) -> SessionUser | None:
    services = hub_ext.services
    with services.db.session() as s:
        return load_session(s, session_id, utcnow(), session_lifetime())


def session_lifetime() -> timedelta:
    """How long a dashboard session lives after login (``login.session_hours``)."""
    return timedelta(hours=hub_ext.services.config.login.session_hours)


def begin(user: User, now: datetime) -> None:
    """Start a fresh session for ``user`` in this browser: a new session row, a new cookie and a
    new CSRF token (at login, and after a password change ended the old sessions)."""
    previous = session_user()
    with hub_ext.services.db.transaction() as s:
        if previous is not None:  # signing in again (maybe as someone else) ends the old session
            end_session(s, previous.session_id)
        prune_sessions(s, now, session_lifetime())
        session_id = start_session(s, user, request.remote_addr or "", now)
    session.clear()
    login_user(SessionUser(session_id, user.id, user.username, Role(user.role)), remember=False)
    session.permanent = True


def safe_next(target: str | None) -> str:
    """``target`` when it is a path on this site, else the fleet page (no open redirect)."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and not urlsplit(target).netloc
    ):
        return target
    return url_for("web.index")


def _message(outcome: LoginOutcome) -> tuple[str, int]:
    until = outcome.until.strftime("%Y-%m-%d %H:%M UTC") if outcome.until else ""
    if outcome.reason == "throttled":
        return (
            f"Too many failed sign-ins from your address: try again after {until}, "
            "or ask an admin if this is unexpected.",
            429,
        )
    if outcome.reason == "locked":
        return (
            f"This account is locked after too many wrong passwords, until {until}. "
            "Wait, or ask an admin to unlock it.",
            403,
        )
    if outcome.reason == "disabled":
        return "This account is disabled; ask an admin to enable it.", 403
    return WRONG, 401


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int] | tuple[str, int, dict[str, str]]:
    services = hub_ext.services
    with services.db.session() as s:
        no_users = not s.scalar(select(func.count(User.id)))
    if request.method == "GET":
        return render_template("login.html", error=None, no_users=no_users, username="")
    check_csrf()
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    now = utcnow()
    with services.db.transaction() as s:
        outcome = check_login(s, username, password, request.remote_addr or "", now, services.config.login)
        user = outcome.user
    if outcome.ok and user is not None:
        begin(user, now)
        return redirect(safe_next(request.args.get("next")))
    error, status = _message(outcome)
    page = render_template("login.html", error=error, no_users=no_users, username=username[:64])
    if outcome.reason == "throttled" and outcome.until is not None:
        retry = max(1, int((outcome.until - now).total_seconds()) + 1)
        return page, status, {"Retry-After": str(retry)}
    return page, status


@bp.post("/logout")
def logout() -> Response:
    """End this browser's session (the row is deleted: a saved cookie is refused afterwards)."""
    check_csrf()
    user = session_user()
    if user is not None:
        with hub_ext.services.db.transaction() as s:
            end_session(s, user.session_id)
        log.info(kv("logout", user=user.username))
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"))
