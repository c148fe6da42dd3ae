"""``/account`` (blueprint ``account``): every signed-in person's own password and API tokens.

Changing the password needs the current one (a wrong one counts towards the account's lockout),
ends every session of the user and revokes their API tokens, then signs this browser in again with
a new session. Personal API tokens act for the person (the audit actor is their user name) with a
role they may grant (:func:`hub.roles.may_grant`: their own; an admin any); the value is shown once,
in the page answering the form, and is never stored or put in the session cookie.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

import hub.web.forms as forms
from hub.db.models import User
from hub.extensions import hub_ext
from hub.identity.secrets import verify_password
from hub.identity.throttle import record_wrong_password
from hub.identity.tokens import IssuedToken, create_token
from hub.identity.users import UserError, set_password
from hub.roles import PEOPLE_ROLES, Role, may_grant
from hub.web.guards import check_csrf, login_required, me
from hub.web.login import begin
from shared.clock import utcnow

bp = Blueprint("account", __name__, template_folder="../templates")


def grantable(role: Role) -> list[Role]:
    """The roles a person with ``role`` may put on a personal token."""
    return [r for r in PEOPLE_ROLES if may_grant(role, r)]


def _page(status: int = 200, error: str | None = None, issued: IssuedToken | None = None) -> Any:
    user = me()
    services = hub_ext.services
    with services.db.session() as s:
        row = s.get(User, user.user_id)
        tokens = services.auth.store.list(s, user_id=user.user_id) if services.auth.store else []
    html = render_template(
        "account.html",
        user=row,
        tokens=tokens,
        roles=grantable(user.role),
        error=error,
        issued=issued,
    )
    return html, status


@bp.get("/account")
@login_required
def account_page() -> Any:
    return _page()


@bp.post("/account/password")
@login_required
def change_password() -> Any:
    """Change one's own password (current one required); ends every other session and token."""
    check_csrf()
    person = me()
    services = hub_ext.services
    now = utcnow()
    form = request.form
    with services.db.transaction() as s:
        user = s.get(User, person.user_id)
        if user is None:  # pragma: no cover - the session loader found it a moment ago
            return redirect(url_for("auth.login"))
        if not verify_password(user.password_hash, form.get("current_password", "")):
            locked = record_wrong_password(s, user, request.remote_addr or "", now, services.config.login)
            error = "Current password: wrong; your password was not changed."
            if locked:
                error += " Too many wrong passwords: the account is locked for new sign-ins for a while."
            status = 400
        else:
            try:
                password = forms.new_password(form.get("new_password", ""), form.get("confirm_password", ""))
                ended = set_password(s, user, password, person.username, now, action="user.password_change")
            except (forms.FormError, UserError) as exc:
                error, status = str(exc), 422
            else:
                error, status = None, 200
    if error is not None:
        return _page(status, error)
    begin(user, now)
    flash(
        f"Password changed. {ended.sessions - 1 if ended.sessions else 0} other session(s) were signed "
        f"out and {ended.tokens} API token(s) revoked."
    )
    return redirect(url_for("account.account_page"))


@bp.post("/account/tokens")
@login_required
def create_own_token() -> Any:
    """Create a personal API token; the page answering shows its value once."""
    check_csrf()
    person = me()
    now = utcnow()
    try:
        name = forms.token_name(request.form.get("name", ""))
        role = forms.role_choice(request.form.get("role", person.role.value), grantable(person.role))
        expires = forms.expires_at(request.form.get("expires_days", ""), now)
    except forms.FormError as exc:
        return _page(422, str(exc))
    with hub_ext.services.db.transaction() as s:
        issued = create_token(
            s,
            name=name,
            role=role,
            actor=person.username,
            now=now,
            user_id=person.user_id,
            expires_at=expires,
        )
    return _page(201, issued=issued)


@bp.post("/account/tokens/<token_id>/revoke")
@login_required
def revoke_own_token(token_id: str) -> Response:
    """Revoke one of one's own tokens."""
    check_csrf()
    person = me()
    services = hub_ext.services
    store = services.auth.store
    with services.db.transaction() as s:
        done = store is not None and store.revoke(
            s, token_id, person.username, utcnow(), user_id=person.user_id
        )
    flash(f"token {token_id} revoked" if done else f"token {token_id[:32]} is not one of your live tokens")
    return redirect(url_for("account.account_page"))
