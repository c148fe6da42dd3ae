"""Read-side views of rollouts for the API, the dashboard and the CLI (JSON-ready dicts)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db.models import AuditEntry, Rollout, RolloutHistory, RolloutTarget
from hub.db.types import iso
from hub.rollouts.policy import stage_sizes
from hub.rollouts.spec import FAILURES, IN_PROGRESS, TargetSpec, TargetState

MAX_FAILURES_LISTED = 100
FAILED_STATES = (*FAILURES, TargetState.ROLLBACK_FAILED.value)


def _counts(states: Counter[str]) -> dict[str, Any]:
    size = sum(states.values())
    return {
        "size": size,
        "succeeded": states[TargetState.SUCCEEDED.value],
        "failed": sum(states[f] for f in FAILURES),
        "in_progress": sum(states[f] for f in IN_PROGRESS),
        "pending": states[TargetState.PENDING.value],
        "rolled_back": states[TargetState.ROLLED_BACK.value],
        "by_state": dict(sorted(states.items())),
    }


def rollout_json(s: Session, r: Rollout, with_targets: bool = False) -> dict[str, Any]:
    """A rollout with per-stage progress and its failures (reasons included).

    ``current_stage`` and ``groups[].stage`` are 1-based, as shown to operators.
    """
    targets = list(
        s.scalars(
            select(RolloutTarget)
            .where(RolloutTarget.rollout_id == r.rollout_id)
            .order_by(RolloutTarget.stage, RolloutTarget.agent_id)
        )
    )
    per_stage: dict[int, Counter[str]] = defaultdict(Counter)
    for t in targets:
        per_stage[t.stage][t.state] += 1
    sizes = stage_sizes(len(targets), r.stages)
    groups = []
    for i, percent in enumerate(r.stages):
        groups.append({"stage": i + 1, "percent": percent, "planned": sizes[i], **_counts(per_stage[i])})
    totals: Counter[str] = Counter(t.state for t in targets)
    failures = [
        {
            "agent_id": t.agent_id,
            "stage": t.stage + 1,
            "state": t.state,
            "detail": t.failure or t.detail,
            "updated_at": iso(t.updated_at),
        }
        for t in targets
        if t.state in FAILED_STATES or t.failure
    ][:MAX_FAILURES_LISTED]
    body: dict[str, Any] = {
        "rollout_id": r.rollout_id,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "state": r.state,
        "reason": r.reason,
        "target": r.target,
        "target_description": TargetSpec.model_validate(r.target).describe(),
        "stages": r.stages,
        "current_stage": r.current_stage + 1,
        "success_threshold": r.success_threshold,
        "error_threshold": r.error_threshold,
        "on_failure": r.on_failure,
        "timeout_s": r.timeout_s,
        "acknowledged_failures": r.acknowledged_failures,
        "created_by": r.created_by,
        "created_at": iso(r.created_at),
        "updated_at": iso(r.updated_at),
        "finished_at": iso(r.finished_at),
        "totals": _counts(totals),
        "groups": groups,
        "failures": failures,
    }
    if with_targets:
        body["targets"] = [target_json(t) for t in targets]
    return body


def target_json(t: RolloutTarget) -> dict[str, Any]:
    return {
        "agent_id": t.agent_id,
        "stage": t.stage + 1,
        "state": t.state,
        "previous_model_name": t.previous_model_name,
        "previous_model_version": t.previous_model_version,
        "detail": t.detail,
        "failure": t.failure,
        "desired_at": iso(t.desired_at),
        "updated_at": iso(t.updated_at),
    }


def history_json(h: RolloutHistory) -> dict[str, Any]:
    return {
        "rollout_id": h.rollout_id,
        "agent_id": h.agent_id,
        "state": h.state,
        "detail": h.detail,
        "at": iso(h.at),
    }


def audit_json(a: AuditEntry) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": iso(a.at),
        "actor": a.actor,
        "action": a.action,
        "subject": a.subject,
        "details": a.details,
    }
