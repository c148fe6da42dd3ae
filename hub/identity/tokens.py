"""API tokens kept in the database: created (dashboard, CLI, enrollment), checked, listed, revoked.

Each token is scoped to one role. A personal token acts for its user (the audit actor is the
person) and dies with the user's account; an agent's token dies when the agent is revoked. The
hub stores only the SHA-256 of a token (see :mod:`hub.identity.secrets`); the value is shown once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub import audit
from hub.db.models import ApiTokenRecord, User
from hub.db.session import Database
from hub.identity.secrets import API_PREFIX, new_token, token_id_of, token_matches
from hub.roles import Principal, Role
from shared.clock import utcnow

#: ``last_used_at`` is written at most this often per token (one write per request would serialise
#: a busy agent's downloads on SQLite)
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class IssuedToken:
    """A token just created: ``value`` is shown once and never stored."""

    token_id: str
    value: str
    name: str
    role: Role


def create_token(
    s: Session,
    *,
    name: str,
    role: Role,
    actor: str,
    now: datetime,
    user_id: int | None = None,
    agent_id: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    """Add a token row in ``s`` (committed by the caller) and audit it; returns the value once."""
    token = new_token(API_PREFIX)
    s.add(
        ApiTokenRecord(
            token_id=token.token_id,
            token_hash=token.token_hash,
            name=name[:64],
            role=role.value,
            user_id=user_id,
            agent_id=agent_id,
            created_by=actor[:64],
            created_at=now,
            expires_at=expires_at,
        )
    )
    audit.record(s, actor, "token.create", f"token/{token.token_id}", now, name=name, role=role.value)
    return IssuedToken(token_id=token.token_id, value=token.value, name=name, role=role)


def revoke_tokens(
    s: Session, now: datetime, *, user_id: int | None = None, agent_id: str | None = None
) -> int:
    """Revoke every live token of a user or an agent (in ``s``); returns how many."""
    q = update(ApiTokenRecord).where(ApiTokenRecord.revoked_at.is_(None)).values(revoked_at=now)
    if user_id is not None:
        q = q.where(ApiTokenRecord.user_id == user_id)
    elif agent_id is not None:
        q = q.where(ApiTokenRecord.agent_id == agent_id)
    else:
        raise ValueError("revoke_tokens needs user_id or agent_id")
    return int(s.execute(q).rowcount or 0)  # type: ignore[attr-defined]


class TokenStore:
    """Checks presented bearer tokens against the ``api_tokens`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def authenticate(self, value: str, now: datetime | None = None) -> Principal | None:
        """The principal of a live token (not revoked, not expired, its user enabled), else None."""
        token_id = token_id_of(value, API_PREFIX)
        if token_id is None:
            return None
        now = now or utcnow()
        with self.db.session() as s:
            row = s.scalar(select(ApiTokenRecord).where(ApiTokenRecord.token_id == token_id))
            if row is None or not token_matches(value, row.token_hash):
                return None
            if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
                return None
            name = row.name
            if row.user_id is not None:
                user = s.get(User, row.user_id)
                if user is None or user.disabled_at is not None:
                    return None
                name = user.username
            if row.last_used_at is None or now - row.last_used_at >= TOUCH_EVERY:
                row.last_used_at = now
                s.commit()
            return Principal(
                name=row.agent_id or name,
                role=Role(row.role),
                via="token",
                user_id=row.user_id,
                agent_id=row.agent_id,
            )

    def list(
        self, s: Session, *, user_id: int | None = None, include_revoked: bool = False
    ) -> list[ApiTokenRecord]:
        """Tokens newest first; only ``user_id``'s when given; agents' tokens are not listed here."""
        q = select(ApiTokenRecord).where(ApiTokenRecord.agent_id.is_(None)).order_by(ApiTokenRecord.id.desc())
        if user_id is not None:
            q = q.where(ApiTokenRecord.user_id == user_id)
        if not include_revoked:
            q = q.where(ApiTokenRecord.revoked_at.is_(None))
        return list(s.scalars(q))

    def revoke(
        self, s: Session, token_id: str, actor: str, now: datetime, *, user_id: int | None = None
    ) -> bool:
        """Revoke one token (only ``user_id``'s own when given); False when there is no such live token."""
        q = select(ApiTokenRecord).where(
            ApiTokenRecord.token_id == token_id, ApiTokenRecord.revoked_at.is_(None)
        )
        if user_id is not None:
            q = q.where(ApiTokenRecord.user_id == user_id)
        row = s.scalar(q)
        if row is None:
            return False
        row.revoked_at = now
        audit.record(s, actor, "token.revoke", f"token/{token_id}", now, name=row.name)
        return True
