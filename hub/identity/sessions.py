"""Dashboard sessions kept in the database (``web_sessions``).

The browser's (signed) session cookie carries a random session id; the hub stores only its
SHA-256. A session is live while its row exists, its user is enabled, and it is younger than
``login.session_hours``. Deleting the row ends it for good: a cookie copied before logout, a
password change or a disable is refused afterwards, whatever its signature says.

:class:`SessionUser` is what Flask-Login holds for the request (its ``get_id()`` is the session
id, Flask-Login's alternative-token pattern), so the user's row is never kept across requests.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from hub.db.models import User, WebSession
from hub.identity.secrets import sha256_hex
from hub.roles import Role

#: ``last_seen_at`` is written at most this often per session
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionUser:
    """The signed-in person of one request, as Flask-Login expects a user object to look."""

    session_id: str
    user_id: int
    username: str
    role: Role

    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str:
        """The session id (not the user id), so ending the session row ends the login."""
        return self.session_id


def start_session(s: Session, user: User, remote: str, now: datetime) -> str:
    """Add a session row for ``user`` (committed by the caller); returns the new session id."""
    session_id = secrets.token_urlsafe(32)
    s.add(
        WebSession(
            session_hash=sha256_hex(session_id),
            user_id=user.id,
            remote=remote[:64],
            created_at=now,
            last_seen_at=now,
        )
    )
    return session_id


def load_session(s: Session, session_id: str, now: datetime, lifetime: timedelta) -> SessionUser | None:
    """The user of a live session, else None (unknown, expired, or the user is disabled).

    An expired row is deleted; ``last_seen_at`` is refreshed at most every :data:`TOUCH_EVERY`.
    Commits its own writes in ``s``.
    """
    if not session_id or len(session_id) > 128:
        return None
    row = s.scalar(select(WebSession).where(WebSession.session_hash == sha256_hex(session_id)))
    if row is None:
        return None
    if row.created_at + lifetime <= now:
        s.delete(row)
        s.commit()
        return None
    user = s.get(User, row.user_id)
    if user is None or user.disabled_at is not None:
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
        s.commit()
    return SessionUser(session_id=session_id, user_id=user.id, username=user.username, role=Role(user.role))


def end_session(s: Session, session_id: str) -> bool:
    """Delete one session row (logout); False when there was none."""
    result = s.execute(delete(WebSession).where(WebSession.session_hash == sha256_hex(session_id)))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def end_user_sessions(s: Session, user_id: int) -> int:
    """Delete every session of a user; returns how many."""
    result = s.execute(delete(WebSession).where(WebSession.user_id == user_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def prune_sessions(s: Session, now: datetime, lifetime: timedelta) -> int:
    """Delete sessions older than ``lifetime``; returns how many."""
    result = s.execute(delete(WebSession).where(WebSession.created_at <= now - lifetime))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def count_sessions(s: Session, user_id: int) -> int:
    """How many session rows a user has (live or not yet pruned)."""
    return int(s.scalar(select(func.count(WebSession.id)).where(WebSession.user_id == user_id)) or 0)
