"""Dashboard views. Pages need a session from ``/login``; the page refreshes itself via the API.

All user data reaches the HTML through Jinja autoescaping (templates) or ``textContent`` (JS).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, redirect, render_template, request, session, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from hub.api.serialize import agent_json, classification_json
from hub.auth import SESSION_USER
from hub.db.models import Agent, Classification
from hub.extensions import hub_ext
from shared.logs import kv

log = logging.getLogger(__name__)
bp = Blueprint(
    "web", __name__, template_folder="../templates", static_folder="../static", static_url_path="/static"
)
F = TypeVar("F", bound=Callable[..., Any])
LATEST = 50


def login_required(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not session.get(SESSION_USER):
            return redirect(url_for("web.login", next=request.path))
        return fn(*args, **kwargs)

    return cast(F, wrapper)


def _safe_next(target: str | None) -> str:
    # only same-site paths, so the login form cannot be used as an open redirect
    if target and target.startswith("/") and not target.startswith("//") and not urlsplit(target).netloc:
        return target
    return url_for("web.index")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    password = hub_ext.services.config.dashboard_password
    if password is None:
        return render_template("login.html", disabled=True, error=None), 403
    error = None
    if request.method == "POST":
        given = request.form.get("password", "").encode()
        if hmac.compare_digest(given, password.get_secret_value().encode()):
            session.clear()
            session[SESSION_USER] = "dashboard"
            session.permanent = True
            log.info(kv("dashboard_login", remote=request.remote_addr))
            return redirect(_safe_next(request.args.get("next")))
        log.warning(kv("dashboard_login_failed", remote=request.remote_addr))
        error = "Wrong password."
        return render_template("login.html", disabled=False, error=error), 401
    return render_template("login.html", disabled=False, error=error)


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    return redirect(url_for("web.login"))


@bp.get("/")
@login_required
def index() -> str:
    with hub_ext.services.db.session() as s:
        agents = [agent_json(a) for a in s.scalars(select(Agent).order_by(Agent.agent_id))]
        results = [
            classification_json(c)
            for c in s.scalars(
                select(Classification)
                .order_by(Classification.captured_at.desc(), Classification.id.desc())
                .limit(LATEST)
            )
        ]
    return render_template("index.html", agents=agents, results=results, latest=LATEST)
