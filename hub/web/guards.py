"""What every dashboard page checks: a signed-in person, their role, and the form's CSRF token.

Pages need a session (else a redirect to ``/login?next=...``); :func:`roles_required` answers 403
to a signed-in person whose role may not use the page or action (``admin`` always may). Every POST
form carries the session's CSRF token (:func:`csrf_token`, checked by :func:`check_csrf`).
:func:`template_globals` gives templates what they need to show only what the role may do.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import abort, get_flashed_messages, redirect, request, session, url_for

from hub.auth import session_user
from hub.config import PASSWORD_MIN_CHARS
from hub.identity.sessions import SessionUser
from hub.roles import OPERATORS, Role

F = TypeVar("F", bound=Callable[..., Any])
CSRF_KEY = "csrf_token"


def me() -> SessionUser:
    """The signed-in person (only inside a :func:`login_required` view)."""
    user = session_user()
    if user is None:  # pragma: no cover - login_required ran first
        abort(401)
    return user


def actor() -> str:
    """The audit actor for this request: the signed-in person's user name."""
    return me().username


def may(user: SessionUser | None, *roles: Role) -> bool:
    """Whether ``user`` has one of ``roles`` or is an admin."""
    return user is not None and (user.role is Role.ADMIN or user.role in roles)


def login_required(fn: F) -> F:
    """Redirect to the login page, coming back here afterwards, unless someone is signed in."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if session_user() is None:
            return redirect(url_for("auth.login", next=request.path))
        return fn(*args, **kwargs)

    return cast(F, wrapper)


def roles_required(*roles: Role) -> Callable[[F], F]:
    """:func:`login_required`, then 403 unless the person is an admin or has one of ``roles``."""

    def decorator(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = session_user()
            if user is None:
                return redirect(url_for("auth.login", next=request.path))
            if not may(user, *roles):
                names = ", ".join(sorted({Role.ADMIN.value, *(r.value for r in roles)}))
                abort(
                    403, description=f"your role {user.role.value} may not do this; it needs one of: {names}"
                )
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    return decorator


admin_required = roles_required()
operator_required = roles_required(*OPERATORS)


def csrf_token() -> str:
    """The session's CSRF token for dashboard forms (created on first use)."""
    token = session.get(CSRF_KEY)
    if not token:
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return str(token)


def check_csrf() -> None:
    """Abort with 400 unless the posted form carries this session's CSRF token."""
    given = request.form.get(CSRF_KEY, "")
    if not given or not hmac.compare_digest(given, csrf_token()):
        abort(400, description="the form expired; reload the page and try again")


def template_globals() -> dict[str, Any]:
    """Names every template sees: the CSRF token, flashes, the person and what their role may do."""
    user = session_user()
    return {
        "csrf_token": csrf_token,
        "flashes": get_flashed_messages,
        "me": user,
        "can_operate": may(user, *OPERATORS),
        "is_admin": may(user),
        "min_password": PASSWORD_MIN_CHARS,
    }
