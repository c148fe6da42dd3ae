"""Dashboard sign-in: the password check with its per-address and per-account throttles.

:func:`check_login` decides one attempt, in this order:

1. **Address.** When ``login.max_failures_per_address`` failed logins came from the address within
   the last ``login.address_window_s``, the attempt is refused (``throttled``, HTTP 429) before any
   password is looked at, until the oldest of them leaves the window.
2. **Password.** argon2id verification, also for a user name that does not exist (against a dummy
   hash), so the answer takes as long and reads the same: "wrong user name or password".
3. **Account.** ``login.max_failures`` wrong passwords in a row lock the account for
   ``login.lockout_s``. A locked or disabled account says so only to someone who gave its correct
   password; everyone else keeps getting the same "wrong" answer, so neither state reveals that a
   user name exists. Wrong passwords during a lockout do not extend it.

Each failure is a ``login_failures`` row (for the address window; older rows are pruned) and an
audit entry (``login.failed``, ``login.locked``, ``login.refused``; success is ``login.ok``), with
the name tried as the actor, and a log line. Passwords are never logged or stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Literal

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from hub import audit
from hub.config import LoginSection
from hub.db.models import LoginFailure, User
from hub.identity.secrets import hash_password, needs_rehash, verify_password
from hub.identity.users import PASSWORD_MAX_CHARS, USERNAME_RE, find_user
from shared.logs import kv

log = logging.getLogger(__name__)

LoginReason = Literal["ok", "wrong", "throttled", "locked", "disabled"]


@dataclass(frozen=True)
class LoginOutcome:
    """The decision on one attempt: ``reason``, the user when the password was right, and for
    ``throttled`` / ``locked`` the time the address or account may try again."""

    reason: LoginReason
    user: User | None = None
    until: datetime | None = None

    @property
    def ok(self) -> bool:
        return self.reason == "ok"


@cache
def _dummy_hash() -> str:
    # made on first use (not at import); verifying against it costs what a real check costs
    return hash_password("no user has this password; it only makes the timing even")


def printable(name: str) -> str:
    """A tried user name made safe for the audit log, the log and the database (64 characters,
    control characters replaced)."""
    return "".join(c if c.isprintable() else "?" for c in name[:64])


def address_retry_at(s: Session, address: str, now: datetime, config: LoginSection) -> datetime | None:
    """When ``address`` may try again, or None when it may try now."""
    window = timedelta(seconds=config.address_window_s)
    recent = list(
        s.scalars(
            select(LoginFailure.at)
            .where(LoginFailure.address == address, LoginFailure.at > now - window)
            .order_by(LoginFailure.at.desc())
            .limit(config.max_failures_per_address)
        )
    )
    if len(recent) < config.max_failures_per_address:
        return None
    return recent[-1] + window


def prune_failures(s: Session, now: datetime, config: LoginSection) -> int:
    """Delete ``login_failures`` rows older than the address window; returns how many."""
    cutoff = now - timedelta(seconds=config.address_window_s)
    result = s.execute(delete(LoginFailure).where(LoginFailure.at <= cutoff))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _failed(s: Session, tried: str, address: str, now: datetime, reason: str) -> None:
    s.add(LoginFailure(address=address[:64], username=tried, at=now))
    audit.record(s, tried, "login.failed", f"user/{tried}", now, address=address, reason=reason)
    log.warning(kv("login_failed", user=tried, address=address, reason=reason))


def record_wrong_password(s: Session, user: User, address: str, now: datetime, config: LoginSection) -> bool:
    """Count one wrong password for ``user`` (and for ``address``); lock the account at the limit.

    Returns True when this failure locked the account.
    """
    _failed(s, user.username, address, now, "wrong_password")
    s.execute(update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1))
    s.refresh(user)
    if user.failed_logins < config.max_failures:
        return False
    user.failed_logins = 0
    user.locked_until = now + timedelta(seconds=config.lockout_s)
    audit.record(
        s,
        user.username,
        "login.locked",
        f"user/{user.username}",
        now,
        address=address,
        until=user.locked_until.isoformat(),
    )
    log.warning(
        kv("account_locked", user=user.username, address=address, until=user.locked_until.isoformat())
    )
    return True


def check_login(
    s: Session, username: str, password: str, address: str, now: datetime, config: LoginSection
) -> LoginOutcome:
    """Decide one sign-in attempt (see the module docstring); the caller commits ``s``.

    On ``ok`` the user's failure count and lockout are cleared, ``last_login_at`` is set and the
    hash is renewed when argon2's parameters changed; the caller then starts the session.
    """
    address = address or "unknown"
    prune_failures(s, now, config)
    retry_at = address_retry_at(s, address, now, config)
    tried = printable(username)
    if retry_at is not None:
        log.warning(kv("login_throttled", user=tried, address=address, until=retry_at.isoformat()))
        return LoginOutcome("throttled", until=retry_at)

    plausible = bool(USERNAME_RE.match(username)) and len(password) <= PASSWORD_MAX_CHARS
    user = find_user(s, username) if plausible else None
    if user is None:
        verify_password(_dummy_hash(), password[:PASSWORD_MAX_CHARS])
        _failed(s, tried, address, now, "unknown_user")
        return LoginOutcome("wrong")

    locked = user.locked_until is not None and user.locked_until > now
    if not verify_password(user.password_hash, password):
        if user.disabled_at is not None or locked:
            # the account is shut already: the address pays, the lockout is not extended
            _failed(s, tried, address, now, "disabled" if user.disabled_at is not None else "locked")
        else:
            record_wrong_password(s, user, address, now, config)
        return LoginOutcome("wrong")

    if user.disabled_at is not None or locked:
        reason: LoginReason = "disabled" if user.disabled_at is not None else "locked"
        audit.record(
            s, user.username, "login.refused", f"user/{user.username}", now, address=address, reason=reason
        )
        log.warning(kv("login_refused", user=user.username, address=address, reason=reason))
        return LoginOutcome(reason, user, user.locked_until if reason == "locked" else None)

    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    audit.record(s, user.username, "login.ok", f"user/{user.username}", now, address=address)
    log.info(kv("login_ok", user=user.username, address=address, role=user.role))
    return LoginOutcome("ok", user)
