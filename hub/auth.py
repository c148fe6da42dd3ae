"""Bearer-token and dashboard-session authentication, with per-route role checks.

API routes take ``Authorization: Bearer <token>``: a token created in the dashboard, the CLI or by
enrollment (``lkn_...``, checked against its hash in the database), or one of the config file's
bootstrap tokens. A logged-in dashboard session (Flask-Login, see :mod:`hub.identity.sessions`)
counts with its user's own role for safe (GET/HEAD) requests only, so the dashboard's fetch() calls
work without exposing writes to cross-site requests.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import g, request
from flask_login import current_user

from hub.config import ApiToken
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.identity.sessions import SessionUser
from hub.identity.tokens import TokenStore
from hub.roles import Principal, Role

F = TypeVar("F", bound=Callable[..., Any])


class TokenAuth:
    """Checks bearer tokens: the database's (:class:`~hub.identity.tokens.TokenStore`), then the
    config file's bootstrap tokens, each compared in constant time."""

    def __init__(self, tokens: list[ApiToken], store: TokenStore | None = None) -> None:
        self._tokens = [
            (t.token.get_secret_value().encode(), Principal(t.name, t.role, via="config")) for t in tokens
        ]
        self.store = store

    def authenticate(self, header: str | None) -> Principal | None:
        """The principal for an ``Authorization`` header value, or None."""
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        if self.store is not None:
            stored = self.store.authenticate(value.strip())
            if stored is not None:
                return stored
        presented = value.strip().encode()
        found: Principal | None = None
        for secret, principal in self._tokens:
            # compare against every token so timing does not reveal which one nearly matched
            if hmac.compare_digest(secret, presented):
                found = principal
        return found


def session_user() -> SessionUser | None:
    """The person signed in to the dashboard in this request, or None."""
    user = current_user._get_current_object()
    return user if isinstance(user, SessionUser) else None


def current_principal(auth: TokenAuth) -> Principal | None:
    """The caller of this request: bearer token first, then a dashboard session for GET/HEAD,
    with the session user's own role."""
    principal = auth.authenticate(request.headers.get("Authorization"))
    if principal is None and request.method in ("GET", "HEAD"):
        user = session_user()
        if user is not None:
            principal = Principal(user.username, user.role, via="session", user_id=user.user_id)
    return principal


def require_roles(*roles: Role) -> Callable[[F], F]:
    """Decorator: 401 without credentials, 403 when the role is not ``admin`` or one of ``roles``."""
    allowed = {Role.ADMIN, *roles}

    def decorator(fn: F) -> F:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            principal = current_principal(hub_ext.services.auth)
            if principal is None:
                raise ApiError(
                    401,
                    "unauthorized",
                    "missing or unknown credentials: send 'Authorization: Bearer <token>' with a "
                    "token from the dashboard's Account page or `leukonet hub tokens create`",
                )
            if principal.role not in allowed:
                names = ", ".join(sorted(r.value for r in allowed))
                raise ApiError(
                    403,
                    "forbidden",
                    f"{principal.name!r} has role {principal.role.value}; "
                    f"this endpoint needs one of: {names}",
                )
            g.principal = principal
            return fn(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
