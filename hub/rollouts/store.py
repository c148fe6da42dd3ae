"""Rollout rows in the database: reading the state the policy needs, and writing every change
together with its history row (every state change of a rollout or target is in ``rollout_history``).

Functions take the caller's :class:`~sqlalchemy.orm.Session`; the engine owns the transactions.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db.models import Agent, ModelVersion, Rollout, RolloutHistory, RolloutTarget
from hub.db.tagging import carrying
from hub.errors import HubError
from hub.rollouts.policy import StageCounts
from hub.rollouts.spec import (
    ACTIVE_ROLLOUT_STATES,
    FAILURES,
    IN_PROGRESS,
    RolloutState,
    TargetSpec,
    TargetState,
)
from shared import topics


class RolloutError(HubError):
    """A rollout request or action the engine refuses; ``status``/``code`` map onto the API error."""


def history(
    s: Session, rollout: Rollout, agent_id: str | None, state: str, detail: str, now: datetime
) -> None:
    s.add(
        RolloutHistory(
            rollout_id=rollout.rollout_id, agent_id=agent_id, state=state, detail=detail[:4096], at=now
        )
    )


def set_rollout_state(
    s: Session, rollout: Rollout, state: RolloutState, reason: str, now: datetime, final: bool = False
) -> None:
    rollout.state = state.value
    rollout.reason = reason
    rollout.updated_at = now
    if final:
        rollout.finished_at = now
    history(s, rollout, None, state.value, reason, now)


def set_target_state(
    s: Session, rollout: Rollout, target: RolloutTarget, state: TargetState, detail: str, now: datetime
) -> bool:
    """Move ``target`` to ``state`` (failures keep their reason); always True (a change happened)."""
    target.state = state.value
    target.detail = detail[:4096]
    if state.value in (*FAILURES, TargetState.ROLLBACK_FAILED.value):
        target.failure = detail[:4096]
    target.updated_at = now
    history(s, rollout, target.agent_id, state.value, detail, now)
    return True


def stage_counts(s: Session, rollout: Rollout) -> StageCounts:
    """The current stage's targets by outcome, as :func:`hub.rollouts.policy.decide` takes them."""
    counts: Counter[str] = Counter(
        s.scalars(
            select(RolloutTarget.state).where(
                RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.stage == rollout.current_stage
            )
        )
    )
    return StageCounts(
        size=sum(counts.values()),
        succeeded=counts[TargetState.SUCCEEDED.value],
        failed=sum(counts[f] for f in FAILURES),
        in_progress=sum(counts[f] for f in IN_PROGRESS),
        acknowledged=rollout.acknowledged_failures,
    )


def has_later_stage(s: Session, rollout: Rollout) -> bool:
    return (
        s.scalar(
            select(RolloutTarget.id)
            .where(
                RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.stage > rollout.current_stage
            )
            .limit(1)
        )
        is not None
    )


def is_busy(s: Session, rollout: Rollout) -> bool:
    """Some target of the rollout (any stage) is still in progress."""
    return (
        s.scalar(
            select(RolloutTarget.id)
            .where(RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.state.in_(IN_PROGRESS))
            .limit(1)
        )
        is not None
    )


def skip_pending(s: Session, rollout: Rollout, now: datetime) -> None:
    for target in s.scalars(
        select(RolloutTarget).where(
            RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.state == TargetState.PENDING.value
        )
    ):
        set_target_state(
            s, rollout, target, TargetState.SKIPPED, f"rollout {rollout.state} before its stage", now
        )


def agent_row(s: Session, cache: dict[str, Agent], agent_id: str, now: datetime) -> Agent:
    agent = cache.get(agent_id)
    if agent is None:
        agent = Agent(agent_id=agent_id, lab="", state="unknown", vitals={}, created_at=now)
        s.add(agent)
        cache[agent_id] = agent
    return agent


def agents_by_id(s: Session, agent_ids: list[str]) -> dict[str, Agent]:
    return {a.agent_id: a for a in s.scalars(select(Agent).where(Agent.agent_id.in_(agent_ids)))}


def model_row(s: Session, name: str, version: str) -> ModelVersion | None:
    return s.scalar(select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version))


def locked(s: Session, rollout_id: str) -> Rollout:
    """The rollout row, locked for this transaction (``SELECT ... FOR UPDATE`` on PostgreSQL).

    Raises:
        RolloutError: 404 no such rollout.
    """
    rollout = s.scalar(select(Rollout).where(Rollout.rollout_id == rollout_id).with_for_update())
    if rollout is None:
        raise RolloutError(
            404,
            "rollout_not_found",
            f"rollout {rollout_id!r} does not exist; list them with `leukonet rollout list`",
        )
    return rollout


def resolve_targets(s: Session, target: TargetSpec) -> list[str]:
    """The agent ids a target spec selects (sorted, unique); tags match an agent's own or its lab's."""
    if target.agents:
        for agent_id in target.agents:
            topics.validate_agent_id(agent_id)
        return sorted(set(target.agents))
    q = select(Agent.agent_id)
    if target.labs:
        q = q.where(Agent.lab.in_(target.labs))
    elif target.tags:
        q = q.where(carrying(target.tags))
    return sorted(set(s.scalars(q)))


def busy_agents(s: Session, agent_ids: list[str], limit: int = 5) -> list[str]:
    """Agents among ``agent_ids`` that are targets of a running or paused rollout (at most ``limit``)."""
    return list(
        s.scalars(
            select(RolloutTarget.agent_id)
            .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
            .where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES), RolloutTarget.agent_id.in_(agent_ids))
            .limit(limit)
        )
    )


def running_model(agent: Agent | None) -> tuple[str | None, str | None]:
    """The model an agent reports running (None, None when unknown)."""
    if agent is None or not agent.model_name or not agent.model_version:
        return None, None
    return agent.model_name, agent.model_version


def model_users(s: Session, name: str, version: str, limit: int = 5) -> list[str]:
    """Rollouts still needing ``name`` ``version`` (a :data:`hub.registry.service.UsageCheck`): active
    rollouts of it and agents being rolled back to it."""
    rollouts = s.scalars(
        select(Rollout.rollout_id)
        .where(
            Rollout.model_name == name,
            Rollout.model_version == version,
            Rollout.state.in_(ACTIVE_ROLLOUT_STATES),
        )
        .limit(limit)
    ).all()
    back = s.scalars(
        select(RolloutTarget.agent_id)
        .where(
            RolloutTarget.previous_model_name == name,
            RolloutTarget.previous_model_version == version,
            RolloutTarget.state == TargetState.ROLLING_BACK.value,
        )
        .limit(limit)
    ).all()
    return [f"rollout {r} is rolling it out" for r in rollouts] + [
        f"agent {a} is rolling back to it" for a in back
    ]
