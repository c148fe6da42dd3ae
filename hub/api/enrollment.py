"""Agent identity routes: enrollment tokens (admin), enrollment (public: the body carries the
single-use token), an agent's own credential rotation (agent), and revocation (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Response, g, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import parse_body
from hub.api.schemas import AgentOut
from hub.api.serialize import agent_json, iso
from hub.db.models import Agent
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.identity.enrollment import AgentCredentials
from hub.roles import Role
from shared.topics import AGENT_ID_PATTERN


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrollmentTokenRequest(_Body):
    """Body of ``POST /agents/enrollment-tokens``; every field optional."""

    agent_id: str | None = Field(
        None, pattern=f"^{AGENT_ID_PATTERN}$", title="only this agent id may redeem it"
    )
    lab: str | None = Field(None, max_length=128, title="only an agent of this lab may redeem it")
    ttl_s: int | None = Field(None, ge=60, le=30 * 86400, title="lifetime in seconds (default: hub config)")


class EnrollmentTokenOut(_Out):
    """A new enrollment token: ``token`` is shown this once."""

    token: str
    token_id: str
    agent_id: str | None
    lab: str | None
    expires_at: datetime
    command: str = Field(title="what to run on the agent machine")


class PendingToken(_Out):
    token_id: str
    agent_id: str | None
    lab: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime


class PendingTokenList(_Out):
    items: list[PendingToken]


class EnrollRequest(_Body):
    """Body of ``POST /enroll``."""

    token: str = Field(min_length=1, max_length=256, title="the enrollment token")
    agent_id: str = Field(min_length=1, max_length=64, title="the agent's id (its config's agent_id)")
    lab: str = Field("", max_length=128, title="the agent's lab")


class MqttLogin(_Out):
    username: str
    password: str


class CredentialsOut(_Out):
    """An agent's own credentials; the agent stores them (mode 0600), the hub only their hashes."""

    agent_id: str
    lab: str
    mqtt: MqttLogin
    api_token: str
    issued_at: datetime


class EmptyBody(_Body):
    """No fields."""


def _credentials(c: AgentCredentials) -> dict[str, Any]:
    return {
        "agent_id": c.agent_id,
        "lab": c.lab,
        "mqtt": {"username": c.mqtt_username, "password": c.mqtt_password},
        "api_token": c.api_token,
        "issued_at": iso(c.issued_at),
    }


@bp.post("/agents/enrollment-tokens")
@documented(
    body=EnrollmentTokenRequest, body_optional=True, responses={201: EnrollmentTokenOut}, errors=(422,)
)
def issue_enrollment_token() -> tuple[Response, int]:
    """Create a single-use enrollment token that expires (admin); its value is shown only here."""
    body = parse_body(EnrollmentTokenRequest, optional=True)
    services = hub_ext.services
    issued = services.enrollment.issue(g.principal.name, body.agent_id, body.lab, body.ttl_s)
    hub_url = services.config.public_url
    # the token goes through the environment, so it never shows in another user's process list
    command = (
        f"LEUKONET_ENROLL_TOKEN={issued.value} leukonet agent enroll --config <agent.yaml> --hub {hub_url}"
    )
    out = {
        "token": issued.value,
        "token_id": issued.token_id,
        "agent_id": issued.agent_id,
        "lab": issued.lab,
        "expires_at": iso(issued.expires_at),
        "command": command,
    }
    return jsonify(out), 201


@bp.get("/agents/enrollment-tokens")
@documented(responses={200: PendingTokenList})
def pending_enrollment_tokens() -> dict[str, Any]:
    """Enrollment tokens neither used nor expired (admin); values are never kept, only ids."""
    rows = hub_ext.services.enrollment.pending_tokens()
    items = [
        {
            "token_id": r.token_id,
            "agent_id": r.agent_id,
            "lab": r.lab,
            "created_by": r.created_by,
            "created_at": iso(r.created_at),
            "expires_at": iso(r.expires_at),
        }
        for r in rows
    ]
    return {"items": items}


@bp.post("/enroll")
@documented(public=True, body=EnrollRequest, responses={201: CredentialsOut}, errors=(401, 403, 422, 503))
def enroll() -> tuple[Response, int]:
    """Redeem an enrollment token for the agent's own broker login and API token (no bearer token).

    The token works once and expires; a token bound to an agent id or lab works only for them.
    """
    body = parse_body(EnrollRequest)
    creds = hub_ext.services.enrollment.enroll(body.token, body.agent_id, body.lab)
    return jsonify(_credentials(creds)), 201


@bp.post("/agents/self/credentials")
@documented(
    Role.AGENT, body=EmptyBody, body_optional=True, responses={200: CredentialsOut}, errors=(403, 422, 503)
)
def rotate_own_credentials() -> dict[str, Any]:
    """Rotate the calling agent's broker password and API token (agent); the old token dies now."""
    parse_body(EmptyBody, optional=True)
    principal = g.principal
    if principal.agent_id is None:
        raise ApiError(403, "forbidden", "only an enrolled agent's own API token can rotate its credentials")
    return _credentials(hub_ext.services.enrollment.rotate(principal.agent_id, principal.agent_id))


@bp.post("/agents/<agent_id>/revoke")
@documented(body=EmptyBody, body_optional=True, responses={200: AgentOut}, errors=(404, 422, 503))
def revoke_agent(agent_id: str) -> dict[str, Any]:
    """Revoke an agent (admin): disconnect it, delete its broker login, revoke its API tokens.

    The hub refuses its messages from then on; it may re-enroll only with a token bound to it.
    """
    parse_body(EmptyBody, optional=True)
    services = hub_ext.services
    services.enrollment.revoke(agent_id, g.principal.name)
    with services.db.session() as s:
        agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
        if agent is None:  # deleted between the two transactions
            raise ApiError(404, "agent_not_found", f"agent {agent_id!r} is unknown to the hub")
        return agent_json(agent)
