"""People's accounts: create, list, disable / enable, set a password, unlock; the first admin.

Every change is audited (``user.*``) in the caller's session, which commits it. A password is
checked against the hub's rules (at least :data:`~hub.config.PASSWORD_MIN_CHARS` characters, not a
placeholder from docker/.env.example) and stored only as its argon2id hash. Setting a password
(change or reset) and disabling a user end all of the user's dashboard sessions and revoke their
personal API tokens, so a leaked password or cookie stops working at once.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub import audit
from hub.config import PASSWORD_MIN_CHARS, HubConfig, check_secret
from hub.db.models import User
from hub.identity.secrets import hash_password
from hub.identity.sessions import end_user_sessions
from hub.identity.tokens import revoke_tokens
from hub.roles import PEOPLE_ROLES, Role
from shared.logs import kv

log = logging.getLogger(__name__)

#: what a user name may hold (the same rule as the config's ``admin_username``)
USERNAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: longer passwords are refused (argon2 takes any length; this bounds the work one request causes)
PASSWORD_MAX_CHARS = 1024

UserErrorReason = Literal[
    "invalid_name", "exists", "not_found", "weak_password", "invalid_role", "last_admin"
]


class UserError(ValueError):
    """A user change the hub refuses; ``reason`` says which rule, ``message`` says what to do."""

    def __init__(self, reason: UserErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Ended:
    """What ending a user's access removed: dashboard sessions and personal API tokens."""

    sessions: int
    tokens: int


def check_username(username: str) -> str:
    """``username`` if it is a valid user name, else :class:`UserError` naming the rule."""
    if not USERNAME_RE.match(username):
        raise UserError(
            "invalid_name",
            f"user name {username[:64]!r} is not allowed: use 1 to 64 letters, digits and _ . @ -",
        )
    return username


def check_password(password: str) -> str:
    """``password`` if the hub accepts it as a new password, else :class:`UserError` naming the rule."""
    if len(password) > PASSWORD_MAX_CHARS:
        raise UserError("weak_password", f"password must be at most {PASSWORD_MAX_CHARS} characters")
    try:
        check_secret(password, "password", PASSWORD_MIN_CHARS)
    except ValueError as exc:
        raise UserError("weak_password", str(exc)) from exc
    return password


def person_role(value: str | Role) -> Role:
    """The person role named ``value`` (viewer, reviewer, operator, admin), else :class:`UserError`."""
    names = ", ".join(r.value for r in PEOPLE_ROLES)
    try:
        role = Role(value)
    except ValueError:
        raise UserError("invalid_role", f"role {str(value)[:32]!r} is unknown; use one of: {names}") from None
    if role not in PEOPLE_ROLES:
        raise UserError("invalid_role", f"role {role.value} is for services, not people; use one of: {names}")
    return role


def find_user(s: Session, username: str) -> User | None:
    """The user called exactly ``username``, or None."""
    return s.scalar(select(User).where(User.username == username))


def get_user(s: Session, username: str) -> User:
    """The user called ``username``, or :class:`UserError` ``not_found``."""
    user = find_user(s, username)
    if user is None:
        raise UserError("not_found", f"there is no user {username[:64]!r}; see `leukonet hub users list`")
    return user


def list_users(s: Session) -> list[User]:
    """Every user, by name."""
    return list(s.scalars(select(User).order_by(User.username)))


def create_user(
    s: Session, username: str, role: Role | str, password: str, actor: str, now: datetime
) -> User:
    """Add a user (in ``s``, committed by the caller) with an argon2id hash of ``password``.

    Raises:
        UserError: invalid name or role, weak password, or a user whose name differs only in case.
    """
    check_username(username)
    role = person_role(role)
    check_password(password)
    clash = s.scalar(select(User.username).where(func.lower(User.username) == username.lower()))
    if clash is not None:
        raise UserError("exists", f"user {clash!r} already exists; pick another name")
    user = User(
        username=username,
        role=role.value,
        password_hash=hash_password(password),
        failed_logins=0,
        password_changed_at=now,
        created_at=now,
    )
    s.add(user)
    s.flush()
    audit.record(s, actor, "user.create", f"user/{username}", now, role=role.value)
    log.info(kv("user_created", user=username, role=role.value, actor=actor))
    return user


def end_access(s: Session, user: User, now: datetime) -> Ended:
    """Delete every dashboard session of ``user`` and revoke their personal API tokens."""
    return Ended(sessions=end_user_sessions(s, user.id), tokens=revoke_tokens(s, now, user_id=user.id))


def set_password(
    s: Session, user: User, password: str, actor: str, now: datetime, *, action: str = "user.password_reset"
) -> Ended:
    """Give ``user`` a new password; ends their sessions and API tokens and clears a lockout.

    Raises:
        UserError: the password breaks a rule.
    """
    check_password(password)
    user.password_hash = hash_password(password)
    user.password_changed_at = now
    user.failed_logins = 0
    user.locked_until = None
    ended = end_access(s, user, now)
    audit.record(
        s,
        actor,
        action,
        f"user/{user.username}",
        now,
        sessions_ended=ended.sessions,
        tokens_revoked=ended.tokens,
    )
    log.info(kv(action.replace(".", "_"), user=user.username, actor=actor, sessions=ended.sessions))
    return ended


def enabled_admins(s: Session) -> int:
    """How many admins are not disabled."""
    q = select(func.count(User.id)).where(User.role == Role.ADMIN.value, User.disabled_at.is_(None))
    return int(s.scalar(q) or 0)


def disable_user(s: Session, user: User, actor: str, now: datetime) -> Ended:
    """Disable ``user``: no login, every session and personal API token ends.

    Raises:
        UserError: ``user`` is the last enabled admin (nobody could manage users any more).
    """
    if user.disabled_at is not None:
        return Ended(0, 0)
    if user.role == Role.ADMIN.value and enabled_admins(s) <= 1:
        raise UserError(
            "last_admin",
            f"{user.username} is the last enabled admin; add or enable another admin first",
        )
    user.disabled_at = now
    ended = end_access(s, user, now)
    audit.record(
        s,
        actor,
        "user.disable",
        f"user/{user.username}",
        now,
        sessions_ended=ended.sessions,
        tokens_revoked=ended.tokens,
    )
    log.warning(kv("user_disabled", user=user.username, actor=actor, sessions=ended.sessions))
    return ended


def enable_user(s: Session, user: User, actor: str, now: datetime) -> None:
    """Let a disabled ``user`` log in again (their old sessions and tokens stay ended)."""
    if user.disabled_at is None:
        return
    user.disabled_at = None
    user.failed_logins = 0
    user.locked_until = None
    audit.record(s, actor, "user.enable", f"user/{user.username}", now)
    log.info(kv("user_enabled", user=user.username, actor=actor))


def unlock_user(s: Session, user: User, actor: str, now: datetime) -> None:
    """Clear ``user``'s wrong-password count and lockout."""
    user.failed_logins = 0
    user.locked_until = None
    audit.record(s, actor, "user.unlock", f"user/{user.username}", now)
    log.info(kv("user_unlocked", user=user.username, actor=actor))


def state_of(user: User, now: datetime) -> str:
    """``disabled``, ``locked`` or ``active``, as the dashboard and the CLI show it."""
    if user.disabled_at is not None:
        return "disabled"
    if user.locked_until is not None and user.locked_until > now:
        return "locked"
    return "active"


def ensure_first_admin(s: Session, config: HubConfig, now: datetime) -> str | None:
    """Create the first admin (``admin_username`` / ``admin_password``) when the hub has no user.

    Returns the name created, or None: users exist already (the config's password is then ignored,
    so changing it later changes nothing), or no ``admin_password`` is set (logged as a warning:
    nobody can sign in until ``leukonet hub users add NAME --role admin``). The caller commits.
    """
    if s.scalar(select(func.count(User.id))):
        return None
    if config.admin_password is None:
        log.warning(
            kv(
                "no_users",
                hint="set admin_password (LEUKONET_HUB_ADMIN_PASSWORD) or run "
                "`leukonet hub users add NAME --role admin`",
            )
        )
        return None
    create_user(s, config.admin_username, Role.ADMIN, config.admin_password.get_secret_value(), "config", now)
    log.info(kv("first_admin_created", user=config.admin_username))
    return config.admin_username
