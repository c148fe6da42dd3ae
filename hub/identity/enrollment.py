"""Agent identities: single-use enrollment tokens, enrollment, credential rotation, revocation.

An admin issues an enrollment token (optionally bound to an agent id and a lab) that expires; the
hub keeps only its SHA-256. The agent redeems it once (``leukonet agent enroll``) and receives its
own broker login (user name = agent id, client id pinned to it) and its own API token (role
``agent``). The agent rotates both itself with its API token, without re-enrolling. Revoking an
agent deletes its broker account (Mosquitto disconnects it at once), revokes its API tokens, and
makes ingest refuse its messages from then on.

Broker accounts are made through :class:`hub.broker.dynsec.BrokerAccounts` *before* the database
commits, so a broker outage leaves the token unused and nothing half-done (503, retry).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from hub import audit
from hub.broker import dynsec
from hub.broker.dynsec import BrokerAccounts, BrokerAccountsError
from hub.config import EnrollmentSection
from hub.db.models import Agent, EnrollmentToken
from hub.db.session import Database
from hub.errors import HubError
from hub.identity.secrets import ENROLL_PREFIX, new_password, new_token, sha256_hex, token_id_of
from hub.identity.tokens import create_token, revoke_tokens
from hub.roles import Role
from shared.clock import utcnow
from shared.logs import kv

log = logging.getLogger(__name__)
MQTT_PASSWORD_CHARS = 32
REVOKED_STATE = "revoked"


class EnrollmentError(HubError):
    """An enrollment, rotation or revocation the hub refuses; ``status`` is the HTTP answer."""


@dataclass(frozen=True)
class IssuedEnrollment:
    """A new enrollment token; ``value`` is shown once and never stored."""

    value: str
    token_id: str
    agent_id: str | None
    lab: str | None
    expires_at: datetime


@dataclass(frozen=True)
class AgentCredentials:
    """What an agent receives on enrollment and on rotation (sent once, never stored in clear)."""

    agent_id: str
    lab: str
    mqtt_username: str
    mqtt_password: str
    api_token: str
    issued_at: datetime


def check_agent_id(agent_id: str) -> str:
    """``agent_id`` if an agent may hold it (topic grammar, not the hub's reserved prefix), else 422."""
    try:
        return dynsec.check_agent_id(agent_id)
    except ValueError as exc:
        raise EnrollmentError(422, "invalid_agent_id", f"{exc} (agent_id in the agent config)") from exc


class Enrollment:
    """The enrollment service (``services.enrollment``).

    Args:
        db: the hub database.
        accounts: the broker's account manager (dynamic security, or an unenforced stand-in).
        config: ``enrollment`` section (token lifetime).
        clock: now, as an aware UTC datetime (tests pass a fake).
    """

    def __init__(
        self,
        db: Database,
        accounts: BrokerAccounts,
        config: EnrollmentSection,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.accounts = accounts
        self.config = config
        self.clock = clock

    # --- admin side --------------------------------------------------------------------------
    def issue(
        self, actor: str, agent_id: str | None = None, lab: str | None = None, ttl_s: int | None = None
    ) -> IssuedEnrollment:
        """A single-use token that expires after ``ttl_s`` (default ``enrollment.token_ttl_s``)."""
        if agent_id is not None:
            check_agent_id(agent_id)
        ttl = ttl_s if ttl_s is not None else self.config.token_ttl_s
        if not 60 <= ttl <= 30 * 86400:
            raise EnrollmentError(422, "invalid_ttl", f"ttl_s must be 60..2592000 seconds, got {ttl}")
        now = self.clock()
        token = new_token(ENROLL_PREFIX)
        expires = now + timedelta(seconds=ttl)
        with self.db.session() as s:
            s.add(
                EnrollmentToken(
                    token_id=token.token_id,
                    token_hash=token.token_hash,
                    agent_id=agent_id,
                    lab=lab,
                    created_by=actor[:64],
                    created_at=now,
                    expires_at=expires,
                )
            )
            audit.record(
                s,
                actor,
                "enrollment.issue",
                f"enrollment/{token.token_id}",
                now,
                agent_id=agent_id,
                lab=lab,
                expires_at=expires.isoformat(),
            )
            s.commit()
        log.info(
            kv("enrollment_token_issued", token_id=token.token_id, agent_id=agent_id or "-", actor=actor)
        )
        return IssuedEnrollment(token.value, token.token_id, agent_id, lab, expires)

    def pending_tokens(self) -> list[EnrollmentToken]:
        """Tokens neither used nor expired, newest first (hashes only; values are never kept)."""
        with self.db.session() as s:
            rows = s.scalars(
                select(EnrollmentToken)
                .where(EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at > self.clock())
                .order_by(EnrollmentToken.id.desc())
            )
            return list(rows)

    def revoke(self, agent_id: str, actor: str) -> None:
        """Delete the agent's broker account (disconnecting it), revoke its API tokens, refuse it."""
        now = self.clock()
        with self.db.session() as s:
            agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
            if agent is None:
                raise EnrollmentError(404, "not_found", f"agent {agent_id!r} is not registered")
            self._broker(
                lambda: self.accounts.remove_agent(agent_id), "remove the broker account of", agent_id
            )
            agent.revoked_at = now
            agent.state = REVOKED_STATE
            tokens = revoke_tokens(s, now, agent_id=agent_id)
            audit.record(s, actor, "agent.revoke", f"agent/{agent_id}", now, api_tokens=tokens)
            s.commit()
        log.warning(kv("agent_revoked", agent_id=agent_id, actor=actor, api_tokens=tokens))

    # --- agent side --------------------------------------------------------------------------
    def enroll(self, value: str, agent_id: str, lab: str) -> AgentCredentials:
        """Redeem enrollment token ``value`` for ``agent_id`` in ``lab``; returns its credentials.

        Raises:
            EnrollmentError: 401 unknown, used or expired token; 403 the token is bound to another
                agent or lab, or the agent was revoked and the token is not bound to it; 422 an
                agent id agents may not hold; 503 the broker did not take the account.
        """
        check_agent_id(agent_id)
        now = self.clock()
        unusable = EnrollmentError(
            401,
            "invalid_enrollment_token",
            "the enrollment token is unknown, already used or expired; ask an admin for a new one "
            "(`leukonet agents enroll-token`, or the dashboard's Agents page)",
        )
        token_id = token_id_of(value, ENROLL_PREFIX)
        if token_id is None:
            raise unusable
        with self.db.session() as s:
            row = s.scalar(select(EnrollmentToken).where(EnrollmentToken.token_id == token_id))
            if row is None or row.token_hash != sha256_hex(value) or row.used_at is not None:
                raise unusable
            if row.expires_at <= now:
                raise unusable
            if row.agent_id is not None and row.agent_id != agent_id:
                raise EnrollmentError(
                    403,
                    "enrollment_token_bound",
                    f"this enrollment token is for agent {row.agent_id!r}, not {agent_id!r}; "
                    "use the agent_id it was issued for, or ask for a token for this agent",
                )
            if row.lab is not None and row.lab != lab:
                raise EnrollmentError(
                    403,
                    "enrollment_token_bound",
                    f"this enrollment token is for lab {row.lab!r}, not {lab!r}; set lab in the agent "
                    "config, or ask for a token for this lab",
                )
            agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
            if agent is not None and agent.revoked_at is not None and row.agent_id != agent_id:
                raise EnrollmentError(
                    403,
                    "agent_revoked",
                    f"agent {agent_id!r} was revoked; only an enrollment token issued for this agent id "
                    "re-admits it (`leukonet agents enroll-token --agent-id ...`)",
                )
            # claim the token first: of two concurrent redemptions only one updates the row
            claimed = s.execute(
                update(EnrollmentToken)
                .where(EnrollmentToken.id == row.id, EnrollmentToken.used_at.is_(None))
                .values(used_at=now, used_by=agent_id)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise unusable
            if agent is None:
                agent = Agent(agent_id=agent_id, lab=lab, state="unknown", created_at=now)
                s.add(agent)
            agent.lab = lab
            agent.enrolled_at = now
            agent.revoked_at = None
            if agent.state == REVOKED_STATE:
                agent.state = "unknown"
            password = new_password(MQTT_PASSWORD_CHARS)
            revoke_tokens(s, now, agent_id=agent_id)
            issued = create_token(
                s, name=agent_id, role=Role.AGENT, actor=agent_id, now=now, agent_id=agent_id
            )
            audit.record(s, agent_id, "agent.enroll", f"agent/{agent_id}", now, token_id=token_id, lab=lab)
            self._broker(
                lambda: self.accounts.add_agent(agent_id, password), "create the broker account of", agent_id
            )
            s.commit()
        log.info(kv("agent_enrolled", agent_id=agent_id, lab=lab, token_id=token_id))
        return AgentCredentials(agent_id, lab, agent_id, password, issued.value, now)

    def rotate(self, agent_id: str, actor: str) -> AgentCredentials:
        """New broker password and API token for an enrolled agent; the old token dies at once."""
        now = self.clock()
        with self.db.session() as s:
            agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
            if agent is None or agent.revoked_at is not None:
                raise EnrollmentError(403, "agent_revoked", f"agent {agent_id!r} is revoked or unknown")
            password = new_password(MQTT_PASSWORD_CHARS)
            revoke_tokens(s, now, agent_id=agent_id)
            issued = create_token(s, name=agent_id, role=Role.AGENT, actor=actor, now=now, agent_id=agent_id)
            agent.credentials_rotated_at = now
            audit.record(s, actor, "agent.rotate", f"agent/{agent_id}", now)
            self._broker(
                lambda: self.accounts.set_password(agent_id, password), "set the broker password of", agent_id
            )
            s.commit()
            lab = agent.lab
        log.info(kv("agent_credentials_rotated", agent_id=agent_id, actor=actor))
        return AgentCredentials(agent_id, lab, agent_id, password, issued.value, now)

    def _broker(self, action: Callable[[], None], what: str, agent_id: str) -> None:
        try:
            action()
        except BrokerAccountsError as exc:
            raise EnrollmentError(
                503,
                "broker_unavailable",
                f"could not {what} agent {agent_id!r}: {exc}; nothing was changed, "
                "retry when the broker is up",
            ) from exc
