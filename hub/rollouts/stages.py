"""Publishing desired states for a rollout: starting a stage, and rolling the rollout back.

Both record the desired model on the agent rows and the target states (with history) in the
caller's transaction, flush, then publish the retained :class:`~shared.schemas.DesiredModel`
messages; a broker outage raises :class:`~hub.mqtt.publisher.BrokerUnavailable` and the caller's
transaction is rolled back, so nothing is recorded that was not sent. A rollback's messages say
``rollback: true``: agents install an older version only when told it is one.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.db.models import Agent, ModelVersion, Rollout, RolloutTarget
from hub.mqtt.publisher import MqttPublisher
from hub.rollouts import store
from hub.rollouts.spec import FAILURES, IN_PROGRESS, RolloutState, TargetState
from hub.rollouts.store import RolloutError
from hub.twin import desired_message


class StagePublisher:
    """Sets and publishes desired states for rollouts.

    Args:
        publisher: publishes the retained desired states.
        public_url: the hub URL agents download bundles from.
    """

    def __init__(self, publisher: MqttPublisher, public_url: str) -> None:
        self.publisher = publisher
        self.public_url = public_url

    def begin(self, s: Session, rollout: Rollout, now: datetime, first_candidate: int) -> int:
        """Start the first stage >= ``first_candidate`` that has targets; publish its desired states."""
        stage = s.scalar(
            select(RolloutTarget.stage)
            .where(RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.stage >= first_candidate)
            .order_by(RolloutTarget.stage)
            .limit(1)
        )
        if stage is None:
            return rollout.current_stage
        rollout.current_stage = stage
        rollout.acknowledged_failures = 0
        rollout.updated_at = now
        model = store.model_row(s, rollout.model_name, rollout.model_version)
        if model is None:
            raise RolloutError(
                409, "model_missing", f"model {rollout.model_name} {rollout.model_version} left the registry"
            )
        targets = list(
            s.scalars(
                select(RolloutTarget).where(
                    RolloutTarget.rollout_id == rollout.rollout_id,
                    RolloutTarget.stage == stage,
                    RolloutTarget.state == TargetState.PENDING.value,
                )
            )
        )
        agents = store.agents_by_id(s, [t.agent_id for t in targets])
        messages: list[tuple[str, bytes]] = []
        for target in targets:
            agent = store.agent_row(s, agents, target.agent_id, now)
            messages.append(self._desire(agent, target, model, rollout, now))
            if store.running_model(agent) == (model.name, model.version):
                store.set_target_state(
                    s, rollout, target, TargetState.SUCCEEDED, "already running this model", now
                )
            else:
                store.set_target_state(
                    s, rollout, target, TargetState.DESIRED, "desired state published", now
                )
        store.history(
            s, rollout, None, f"stage_{stage + 1}", f"stage {stage + 1}: {len(targets)} agents", now
        )
        s.flush()
        self.publisher.publish_many(messages, retain=True)
        return stage

    def roll_back(self, s: Session, rollout: Rollout, note: str, now: datetime) -> None:
        """Desire every reached agent's previous model again, as a rollback; pending targets are skipped."""
        store.skip_pending(s, rollout, now)
        # locked in target order, as the engine's reconciliation locks them: an ingest worker
        # applying a report to one of them finishes first, and its state is the one read here
        touched = list(
            s.scalars(
                select(RolloutTarget)
                .where(
                    RolloutTarget.rollout_id == rollout.rollout_id,
                    RolloutTarget.state.in_((*IN_PROGRESS, *FAILURES, TargetState.SUCCEEDED.value)),
                )
                .order_by(RolloutTarget.id)
                .with_for_update()
            )
        )
        agents = store.agents_by_id(s, [t.agent_id for t in touched])
        models: dict[tuple[str, str], ModelVersion | None] = {}
        messages: list[tuple[str, bytes]] = []
        for target in touched:
            agent = store.agent_row(s, agents, target.agent_id, now)
            prev_name, prev_version = target.previous_model_name, target.previous_model_version
            if prev_name is None or prev_version is None:
                store.set_target_state(
                    s,
                    rollout,
                    target,
                    TargetState.ROLLBACK_FAILED,
                    "the agent ran no model before this rollout; it keeps the current one",
                    now,
                )
                continue
            prev = (prev_name, prev_version)
            if prev not in models:
                models[prev] = store.model_row(s, prev[0], prev[1])
            model = models[prev]
            if model is None:
                store.set_target_state(
                    s,
                    rollout,
                    target,
                    TargetState.ROLLBACK_FAILED,
                    f"previous model {prev[0]} {prev[1]} is not in the registry; upload it and desire it",
                    now,
                )
                continue
            messages.append(self._desire(agent, target, model, rollout, now, rollback=True))
            if store.running_model(agent) == prev:
                store.set_target_state(
                    s, rollout, target, TargetState.ROLLED_BACK, "already runs the previous model", now
                )
            else:
                store.set_target_state(
                    s, rollout, target, TargetState.ROLLING_BACK, f"desired back to {prev[0]} {prev[1]}", now
                )
        store.set_rollout_state(s, rollout, RolloutState.ROLLED_BACK, note, now, final=True)
        s.flush()
        self.publisher.publish_many(messages, retain=True)

    def _desire(
        self,
        agent: Agent,
        target: RolloutTarget,
        model: ModelVersion,
        rollout: Rollout,
        now: datetime,
        rollback: bool = False,
    ) -> tuple[str, bytes]:
        """Record ``model`` as the agent's desired state; the retained message to publish."""
        agent.desired_model_name, agent.desired_model_version = model.name, model.version
        agent.desired_set_at = now
        target.desired_at = now
        topic, desired = desired_message(
            self.public_url, target.agent_id, model, rollout.rollout_id, now, rollback=rollback
        )
        return topic, desired.to_json()
