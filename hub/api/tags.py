"""Tags on agents and labs (rollouts target them), labs overview, and an agent's model history."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Annotated, Any

from flask import g
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from hub import audit
from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import parse_body
from hub.api.schemas import AgentHistory, AgentOut, LabList, LabOut
from hub.api.serialize import agent_json, iso
from hub.db.models import Agent, AgentTag, LabTag, ModelEventRecord, RolloutHistory
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.roles import OPERATORS, READERS
from hub.rollouts.report import history_json

MAX_EVENTS = 500
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
#: 1-64 of A-Z a-z 0-9 _ . : -, starting with a letter or digit
Tag = Annotated[str, StringConstraints(pattern=TAG_RE.pattern)]


class TagsBody(BaseModel):
    """Body of ``PUT .../tags``: the complete new tag set (an empty list removes every tag)."""

    model_config = ConfigDict(extra="forbid")

    tags: list[Tag] = Field(max_length=50, title="tags, e.g. pilot, site:north (1-64 of A-Z a-z 0-9 _ . : -)")

    @field_validator("tags")
    @classmethod
    def _unique_sorted(cls, v: list[str]) -> list[str]:
        return sorted(set(v))


def agent_tags(s: Session, agent_ids: list[str] | None = None) -> dict[str, list[str]]:
    """Tags per agent (all agents when ``agent_ids`` is None)."""
    q = select(AgentTag.agent_id, AgentTag.tag).order_by(AgentTag.tag)
    if agent_ids is not None:
        q = q.where(AgentTag.agent_id.in_(agent_ids))
    out: dict[str, list[str]] = defaultdict(list)
    for agent_id, tag in s.execute(q):
        out[agent_id].append(tag)
    return out


def lab_tags(s: Session) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for lab, tag in s.execute(select(LabTag.lab, LabTag.tag).order_by(LabTag.tag)):
        out[lab].append(tag)
    return out


@bp.put("/agents/<agent_id>/tags")
@documented(*OPERATORS, body=TagsBody, responses={200: AgentOut}, errors=(404, 422))
def put_agent_tags(agent_id: str) -> dict[str, Any]:
    """Replace an agent's tags; answers the agent."""
    tags = parse_body(TagsBody).tags
    with hub_ext.services.db.transaction() as s:
        agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
        if agent is None:
            raise ApiError(404, "agent_not_found", f"agent {agent_id!r} is unknown to the hub")
        s.execute(delete(AgentTag).where(AgentTag.agent_id == agent_id))
        s.add_all(AgentTag(agent_id=agent_id, tag=t) for t in tags)
        audit.record(
            s, g.principal.name, "agent.tags", f"agent/{agent_id}", datetime.now(timezone.utc), tags=tags
        )
        s.flush()
        return agent_json(agent, tags=tags)


@bp.get("/labs")
@documented(*READERS, responses={200: LabList})
def list_labs() -> dict[str, Any]:
    """Every lab agents reported or that has tags, with its agent count and tags."""
    with hub_ext.services.db.session() as s:
        counts = Counter(s.scalars(select(Agent.lab)))
        tags = lab_tags(s)
    labs = sorted((set(counts) | set(tags)) - {""})
    return {"items": [{"lab": lab, "agents": counts.get(lab, 0), "tags": tags.get(lab, [])} for lab in labs]}


@bp.put("/labs/<lab>/tags")
@documented(*OPERATORS, body=TagsBody, responses={200: LabOut}, errors=(422,))
def put_lab_tags(lab: str) -> dict[str, Any]:
    """Replace a lab's tags (every agent reporting the lab carries them); answers the lab."""
    tags = parse_body(TagsBody).tags
    if not lab or len(lab) > 128:
        raise ApiError(400, "invalid_lab", "lab names are 1-128 characters")
    with hub_ext.services.db.transaction() as s:
        s.execute(delete(LabTag).where(LabTag.lab == lab))
        s.add_all(LabTag(lab=lab, tag=t) for t in tags)
        audit.record(s, g.principal.name, "lab.tags", f"lab/{lab}", datetime.now(timezone.utc), tags=tags)
        n = len(list(s.scalars(select(Agent.id).where(Agent.lab == lab))))
    return {"lab": lab, "agents": n, "tags": tags}


@bp.get("/agents/<agent_id>/history")
@documented(*READERS, responses={200: AgentHistory}, errors=(404,))
def agent_history(agent_id: str) -> dict[str, Any]:
    """The agent's model events (newest first) and its rollout target changes."""
    with hub_ext.services.db.session() as s:
        if s.scalar(select(Agent.id).where(Agent.agent_id == agent_id)) is None:
            raise ApiError(404, "agent_not_found", f"agent {agent_id!r} is unknown to the hub")
        events = s.scalars(
            select(ModelEventRecord)
            .where(ModelEventRecord.agent_id == agent_id)
            .order_by(ModelEventRecord.sent_at.desc(), ModelEventRecord.id.desc())
            .limit(MAX_EVENTS)
        )
        rollouts = s.scalars(
            select(RolloutHistory)
            .where(RolloutHistory.agent_id == agent_id)
            .order_by(RolloutHistory.id.desc())
            .limit(MAX_EVENTS)
        )
        return {
            "agent_id": agent_id,
            "events": [
                {
                    "event": e.event,
                    "model_name": e.model_name,
                    "model_version": e.model_version,
                    "rollout_id": e.rollout_id,
                    "detail": e.detail,
                    "sent_at": iso(e.sent_at),
                    "received_at": iso(e.received_at),
                }
                for e in events
            ],
            "rollouts": [history_json(h) for h in rollouts],
        }
