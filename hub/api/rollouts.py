"""Rollout routes: start (admin), list + show (trainer/admin), pause / resume / abort / rollback
(admin), per-target history, and the audit log (admin)."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select

from hub import audit
from hub.api.blueprint import bp
from hub.auth import require_roles
from hub.config import Role
from hub.db.models import Rollout, RolloutHistory
from hub.errors import ApiError
from hub.extensions import hub_ext
from hub.mqtt.publisher import BrokerUnavailable
from hub.rollouts.report import audit_json, history_json, rollout_json
from hub.rollouts.spec import RolloutRequest, RolloutState
from shared.topics import TopicError

ACTIONS = ("pause", "resume", "abort", "rollback")
MAX_HISTORY = 5000


class ActionBody(BaseModel):
    """Optional body of ``POST /rollouts/<id>/<action>``."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=1024, title="why (kept in the audit log)")


def parse_body(model: type[BaseModel], allow_empty: bool = False) -> Any:
    """Validate the JSON body against ``model``: 400 not a JSON object, 422 field errors."""
    data = request.get_json(silent=True)
    if data is None and allow_empty and not request.get_data():
        data = {}
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "send a JSON object (Content-Type: application/json)")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_body", validation_message(exc)) from exc


def validation_message(exc: ValidationError) -> str:
    """Every field error as ``field: message``, joined by ``; `` (``<body>`` for cross-field rules)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '<body>'}: {e['msg']}" for e in exc.errors())


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
@require_roles()
def start_rollout() -> tuple[Response, int]:
    """Start a staged rollout; 201 with the rollout (404 model, 409 agents busy, 422 no targets)."""
    body: RolloutRequest = parse_body(RolloutRequest)
    try:
        rollout_id = hub_ext.services.rollouts.start(body, actor=g.principal.name)
    except (BrokerUnavailable, TopicError) as exc:
        raise rollout_error(exc) from exc
    return jsonify(_rollout(rollout_id)), 201


@bp.get("/rollouts")
@require_roles(Role.TRAINER)
def list_rollouts() -> dict[str, Any]:
    """Newest first; ``?state=running`` filters."""
    state = request.args.get("state")
    if state and state not in {s.value for s in RolloutState}:
        raise ApiError(400, "invalid_parameter", f"state must be one of {[s.value for s in RolloutState]}")
    with hub_ext.services.db.session() as s:
        q = select(Rollout).order_by(Rollout.id.desc())
        if state:
            q = q.where(Rollout.state == state)
        return {"items": [rollout_json(s, r) for r in s.scalars(q)]}


@bp.get("/rollouts/<rollout_id>")
@require_roles(Role.TRAINER)
def show_rollout(rollout_id: str) -> dict[str, Any]:
    return _rollout(rollout_id)


@bp.get("/rollouts/<rollout_id>/history")
@require_roles(Role.TRAINER)
def rollout_history(rollout_id: str) -> dict[str, Any]:
    """State changes of the rollout and its targets, oldest first; ``?agent_id=`` for one target."""
    _rollout(rollout_id)
    with hub_ext.services.db.session() as s:
        q = select(RolloutHistory).where(RolloutHistory.rollout_id == rollout_id)
        if agent_id := request.args.get("agent_id"):
            q = q.where(RolloutHistory.agent_id == agent_id)
        rows = s.scalars(q.order_by(RolloutHistory.id).limit(MAX_HISTORY))
        return {"items": [history_json(h) for h in rows]}


@bp.post("/rollouts/<rollout_id>/<action>")
@require_roles()
def rollout_action(rollout_id: str, action: str) -> dict[str, Any]:
    """pause | resume | abort | rollback, body ``{"reason": "..."}`` optional; 409 from a wrong state."""
    if action not in ACTIONS:
        raise ApiError(
            404, "not_found", f"unknown rollout action {action!r}; use one of {', '.join(ACTIONS)}"
        )
    body: ActionBody = parse_body(ActionBody, allow_empty=True)
    engine = hub_ext.services.rollouts
    try:
        getattr(engine, action)(rollout_id, g.principal.name, body.reason)
    except BrokerUnavailable as exc:
        raise rollout_error(exc) from exc
    return _rollout(rollout_id)


@bp.get("/audit")
@require_roles()
def audit_log() -> dict[str, Any]:
    """Newest first; ``?subject=rollout/<id>`` (prefix) and ``?limit=`` (1..1000, default 100)."""
    raw = request.args.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError(400, "invalid_parameter", f"limit must be an integer 1..1000, got {raw!r}")
    with hub_ext.services.db.session() as s:
        rows = audit.recent(s, int(raw), request.args.get("subject"))
        return {"items": [audit_json(a) for a in rows]}
