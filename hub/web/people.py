"""Admin pages for people and API tokens (blueprint ``people``, admins only, 403 for others).

``/admin/users``: every user with role, state and last login; add a user with a role and an initial
password; disable / enable; reset a password (ends their sessions and API tokens); unlock.
``/admin/tokens``: every API token that is not an agent's (agents' tokens belong to enrollment,
see ``/admin/agents``); create a service token with any role; revoke any. Every form is
CSRF-checked, every change audited with the admin's user name. New token values are shown once in
the page answering the form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

import hub.web.forms as forms
from hub.db.models import User
from hub.extensions import hub_ext
from hub.identity.tokens import IssuedToken, create_token
from hub.identity.users import (
    UserError,
    create_user,
    disable_user,
    enable_user,
    get_user,
    list_users,
    set_password,
    state_of,
    unlock_user,
)
from hub.roles import PEOPLE_ROLES, Role
from hub.web.guards import admin_required, check_csrf, me
from shared.clock import utcnow

bp = Blueprint("people", __name__, template_folder="../templates")
USER_ACTIONS = ("disable", "enable", "unlock")


def _users_page(status: int = 200, error: str | None = None, form: dict[str, str] | None = None) -> Any:
    now = utcnow()
    with hub_ext.services.db.session() as s:
        users = [(u, state_of(u, now)) for u in list_users(s)]
    html = render_template(
        "users.html", users=users, roles=PEOPLE_ROLES, error=error, form=form or {}, myself=me().username
    )
    return html, status


@bp.get("/admin/users")
@admin_required
def users_page() -> Any:
    return _users_page()


@bp.post("/admin/users")
@admin_required
def add_user() -> Any:
    """Add a user with a role and an initial password (typed twice)."""
    check_csrf()
    form = {k: request.form.get(k, "").strip() for k in ("username", "role")}
    try:
        password = forms.new_password(
            request.form.get("password", ""), request.form.get("confirm_password", "")
        )
        with hub_ext.services.db.transaction() as s:
            create_user(s, form["username"], form["role"], password, me().username, utcnow())
    except (forms.FormError, UserError) as exc:
        status = 409 if isinstance(exc, UserError) and exc.reason == "exists" else 422
        return _users_page(status, f"Not added: {exc}", form)
    flash(f"user {form['username']} added with role {form['role']}")
    return redirect(url_for("people.users_page"))


def _change(username: str, what: str, change: Callable[[Any, User], str]) -> Any:
    """Run ``change(session, user)`` in one transaction; flash its message, or the refusal."""
    try:
        with hub_ext.services.db.transaction() as s:
            message = change(s, get_user(s, username))
    except UserError as exc:
        status = 404 if exc.reason == "not_found" else 409 if exc.reason == "last_admin" else 422
        return _users_page(status, f"{what} refused: {exc}")
    flash(message)
    return redirect(url_for("people.users_page"))


@bp.post("/admin/users/<username>/<action>")
@admin_required
def user_action(username: str, action: str) -> Any:
    """Disable, enable or unlock a user."""
    if action not in USER_ACTIONS:
        return _users_page(404, f"unknown action {action[:32]!r}; use one of: {', '.join(USER_ACTIONS)}")
    check_csrf()
    admin, now = me().username, utcnow()
    if action == "disable" and username == admin:
        return _users_page(409, "disable refused: you cannot disable your own account; ask another admin")

    def change(s: Any, user: User) -> str:
        if action == "disable":
            ended = disable_user(s, user, admin, now)
            return (
                f"{user.username} disabled: {ended.sessions} session(s) ended, "
                f"{ended.tokens} token(s) revoked"
            )
        if action == "enable":
            enable_user(s, user, admin, now)
            return f"{user.username} enabled"
        unlock_user(s, user, admin, now)
        return f"{user.username} unlocked"

    return _change(username, action, change)


@bp.post("/admin/users/<username>/password")
@admin_required
def reset_password(username: str) -> Any:
    """Give a user a new password; their sessions and API tokens end."""
    check_csrf()
    admin, now = me().username, utcnow()
    if username == admin:
        return _users_page(409, "reset refused: change your own password on your Account page")
    try:
        password = forms.new_password(
            request.form.get("password", ""), request.form.get("confirm_password", "")
        )
    except forms.FormError as exc:
        return _users_page(422, f"reset refused: {exc}")

    def change(s: Any, user: User) -> str:
        ended = set_password(s, user, password, admin, now)
        return (
            f"password of {user.username} reset: {ended.sessions} session(s) ended, "
            f"{ended.tokens} token(s) revoked"
        )

    return _change(username, "reset", change)


# --- API tokens ----------------------------------------------------------------------------------


def _tokens_page(status: int = 200, error: str | None = None, issued: IssuedToken | None = None) -> Any:
    services = hub_ext.services
    with services.db.session() as s:
        tokens = services.auth.store.list(s) if services.auth.store else []
        owners = {u.id: u.username for u in s.scalars(select(User))}
    html = render_template(
        "tokens.html", tokens=tokens, owners=owners, roles=list(Role), error=error, issued=issued
    )
    return html, status


@bp.get("/admin/tokens")
@admin_required
def tokens_page() -> Any:
    return _tokens_page()


@bp.post("/admin/tokens")
@admin_required
def create_service_token() -> Any:
    """Create a service token (no user) with any role; the page answering shows its value once."""
    check_csrf()
    now = utcnow()
    try:
        name = forms.token_name(request.form.get("name", ""))
        role = forms.role_choice(request.form.get("role", ""), list(Role))
        expires = forms.expires_at(request.form.get("expires_days", ""), now)
    except forms.FormError as exc:
        return _tokens_page(422, str(exc))
    with hub_ext.services.db.transaction() as s:
        issued = create_token(s, name=name, role=role, actor=me().username, now=now, expires_at=expires)
    return _tokens_page(201, issued=issued)


@bp.post("/admin/tokens/<token_id>/revoke")
@admin_required
def revoke_token(token_id: str) -> Response:
    """Revoke any live token by its id."""
    check_csrf()
    services = hub_ext.services
    store = services.auth.store
    with services.db.transaction() as s:
        done = store is not None and store.revoke(s, token_id, me().username, utcnow())
    flash(f"token {token_id} revoked" if done else f"no live token {token_id[:32]}")
    return redirect(url_for("people.tokens_page"))
