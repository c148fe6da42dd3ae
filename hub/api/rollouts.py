"""Rollout routes: start (admin), list + show (trainer/admin), pause / resume / abort / rollback
(admin), per-target history, and the audit log (admin)."""

from __future__ import annotations

from typing import Any, Literal, get_args

from flask import Response, g, jsonify
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from hub import audit
from hub.api.blueprint import bp
from hub.api.openapi import documented
from hub.api.params import QueryModel, parse_body, parse_query
from hub.api.params import validation_message as validation_message  # re-exported for the dashboard
from hub.api.schemas import AuditList, HistoryList, RolloutDetail, RolloutList
from hub.db.models import Rollout, RolloutHistory
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.mqtt.publisher import BrokerUnavailable
from hub.roles import OPERATORS, READERS
from hub.rollouts.report import audit_json, history_json, rollout_json
from hub.rollouts.spec import RolloutRequest, RolloutState
from shared.topics import TopicError

Action = Literal["pause", "resume", "abort", "rollback"]
ACTIONS: tuple[str, ...] = get_args(Action)
MAX_HISTORY = 5000
MAX_AUDIT = 1000


class ActionBody(BaseModel):
    """Optional body of ``POST /rollouts/<id>/<action>``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1024, title="why (kept in the audit log)")


class ActionPath(BaseModel):
    """Path parameters of ``POST /rollouts/<id>/<action>`` (an unknown action is a 404)."""

    rollout_id: str = Field(min_length=1, pattern="^[^/]+$", title="rollout id")
    action: Action = Field(title="what to do")


class RolloutsQuery(QueryModel):
    state: RolloutState | None = Field(None, title="only rollouts in this state")


class HistoryQuery(QueryModel):
    agent_id: str | None = Field(None, title="only this target's changes")


class AuditQuery(QueryModel):
    limit: int = Field(100, ge=1, le=MAX_AUDIT, title="most entries to return")
    subject: str | None = Field(None, title="subject prefix, e.g. rollout/<id>")


def rollout_error(exc: BrokerUnavailable | TopicError) -> ApiError:
    if isinstance(exc, TopicError):
        return ApiError(400, "invalid_agent_id", str(exc))
    return ApiError(503, "broker_unavailable", f"{exc}; nothing was changed, retry when the broker is up")


def _rollout(rollout_id: str) -> dict[str, Any]:
    with hub_ext.services.db.session() as s:
        row = s.scalar(select(Rollout).where(Rollout.rollout_id == rollout_id))
        if row is None:
            raise ApiError(404, "rollout_not_found", f"rollout {rollout_id!r} does not exist")
        return rollout_json(s, row, with_targets=True)


@bp.post("/rollouts")
@documented(*OPERATORS, body=RolloutRequest, responses={201: RolloutDetail}, errors=(404, 409, 422, 503))
def start_rollout() -> tuple[Response, int]:
    """Start a staged rollout; 201 with the rollout (404 model, 409 agents busy, 422 no targets)."""
    body = parse_body(RolloutRequest)
    try:
        rollout_id = hub_ext.services.rollouts.start(body, actor=g.principal.name)
    except (BrokerUnavailable, TopicError) as exc:
        raise rollout_error(exc) from exc
    return jsonify(_rollout(rollout_id)), 201


@bp.get("/rollouts")
@documented(*READERS, query=RolloutsQuery, responses={200: RolloutList})
def list_rollouts() -> dict[str, Any]:
    """Rollouts newest first; ``?state=running`` filters."""
    state = parse_query(RolloutsQuery).state
    with hub_ext.services.db.session() as s:
        q = select(Rollout).order_by(Rollout.id.desc())
        if state is not None:
            q = q.where(Rollout.state == state.value)
        return {"items": [rollout_json(s, r) for r in s.scalars(q)]}


@bp.get("/rollouts/<rollout_id>")
@documented(*READERS, responses={200: RolloutDetail}, errors=(404,))
def show_rollout(rollout_id: str) -> dict[str, Any]:
    """One rollout with its stages, failures and every target."""
    return _rollout(rollout_id)


@bp.get("/rollouts/<rollout_id>/history")
@documented(*READERS, query=HistoryQuery, responses={200: HistoryList}, errors=(404,))
def rollout_history(rollout_id: str) -> dict[str, Any]:
    """State changes of the rollout and its targets, oldest first; ``?agent_id=`` for one target."""
    agent_id = parse_query(HistoryQuery).agent_id
    _rollout(rollout_id)
    with hub_ext.services.db.session() as s:
        q = select(RolloutHistory).where(RolloutHistory.rollout_id == rollout_id)
        if agent_id:
            q = q.where(RolloutHistory.agent_id == agent_id)
        rows = s.scalars(q.order_by(RolloutHistory.id).limit(MAX_HISTORY))
        return {"items": [history_json(h) for h in rows]}


@bp.post("/rollouts/<rollout_id>/<action>")
@documented(
    *OPERATORS,
    path=ActionPath,
    body=ActionBody,
    body_optional=True,
    responses={200: RolloutDetail},
    errors=(404, 409, 422, 503),
)
def rollout_action(rollout_id: str, action: str) -> dict[str, Any]:
    """pause | resume | abort | rollback, body ``{"reason": "..."}`` optional; 409 from a wrong state."""
    if action not in ACTIONS:
        raise ApiError(
            404, "not_found", f"unknown rollout action {action!r}; use one of {', '.join(ACTIONS)}"
        )
    body = parse_body(ActionBody, optional=True)
    engine = hub_ext.services.rollouts
    try:
        getattr(engine, action)(rollout_id, g.principal.name, body.reason)
    except BrokerUnavailable as exc:
        raise rollout_error(exc) from exc
    return _rollout(rollout_id)


@bp.get("/audit")
@documented(*READERS, query=AuditQuery, responses={200: AuditList})
def audit_log() -> dict[str, Any]:
    """The audit log newest first; ``?subject=`` keeps a subject prefix, ``?limit=`` 1..1000 (default 100)."""
    q = parse_query(AuditQuery)
    with hub_ext.services.db.session() as s:
        rows = audit.recent(s, q.limit, q.subject)
        return {"items": [audit_json(a) for a in rows]}
