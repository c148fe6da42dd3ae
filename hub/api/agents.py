"""Agent routes: list, show, and set the desired model (admin)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_body, parse_query
from hub.api.schemas import AgentDetail, AgentList
from hub.api.serialize import agent_json
from hub.api.tags import agent_tags, lab_tags
from hub.db.models import Agent
from hub.db.tagging import carrying
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.mqtt.publisher import BrokerUnavailable
from hub.roles import OPERATORS, READERS
from hub.twin import set_desired
from shared.schemas import DesiredModel
from shared.topics import TopicError, validate_agent_id


class DesiredBody(BaseModel):
    """Body of ``PUT /agents/<id>/desired``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=128, title="registered model name")
    model_version: str = Field(min_length=1, max_length=64, title="registered model version")


class AgentsQuery(QueryModel):
    tag: str | None = Field(None, title="keep agents carrying this tag (or whose lab does)")


@bp.get("/agents")
@documented(*READERS, query=AgentsQuery, responses={200: AgentList})
def list_agents() -> dict[str, Any]:
    """Every agent; ``?tag=`` keeps those carrying the tag (on the agent or its lab)."""
    tag = parse_query(AgentsQuery).tag
    query = select(Agent).order_by(Agent.agent_id)
    if tag:
        query = query.where(carrying([tag]))
    with hub_ext.services.db.session() as s:
        rows = s.scalars(query).all()
        tags = agent_tags(s, [a.agent_id for a in rows] if tag else None)
        return {"items": [agent_json(a, tags=tags.get(a.agent_id, [])) for a in rows]}


@bp.get("/agents/<agent_id>")
@documented(*READERS, responses={200: AgentDetail}, errors=(404,))
def show_agent(agent_id: str) -> dict[str, Any]:
    """One agent, with its own tags and those of its lab."""
    with hub_ext.services.db.session() as s:
        agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
        if agent is None:
            raise ApiError(404, "agent_not_found", f"agent {agent_id!r} is unknown to the hub")
        body = agent_json(agent, tags=agent_tags(s, [agent_id]).get(agent_id, []))
        body["lab_tags"] = lab_tags(s).get(agent.lab, [])
        return body


@bp.put("/agents/<agent_id>/desired")
@documented(*OPERATORS, body=DesiredBody, responses={200: DesiredModel}, errors=(404, 422, 503))
def put_desired(agent_id: str) -> dict[str, Any]:
    """Store the desired model and publish it retained; returns the DesiredModel JSON (503: no broker)."""
    try:
        validate_agent_id(agent_id)
    except TopicError as exc:
        raise ApiError(400, "invalid_agent_id", str(exc)) from exc
    body = parse_body(DesiredBody)
    services = hub_ext.services
    try:
        _agent, desired = set_desired(
            services.db,
            services.publisher,
            services.config.public_url,
            agent_id,
            body.model_name,
            body.model_version,
        )
    except BrokerUnavailable as exc:
        raise ApiError(
            503, "broker_unavailable", f"{exc}; nothing was changed, retry when the broker is up"
        ) from exc
    return desired.model_dump(mode="json")
