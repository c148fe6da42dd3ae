"""Desired state (the device-twin half the hub owns): store it, then publish it retained.

The retained :class:`~shared.schemas.DesiredModel` on ``leukonet/v1/agents/<id>/desired`` tells
an agent which bundle to run; it is published inside the database transaction that records it,
so a broker outage leaves nothing half-done (the API answers 503 and nothing changes).

Agents refuse a version below the one they run unless the desired state says ``rollback: true``.
The hub says so where it desires an older model on purpose: a rollout's rollback
(:meth:`hub.rollouts.stages.StagePublisher.roll_back`), and an operator's explicit choice
(:func:`set_desired`) of a version below the one the agent last reported running
(:meth:`~shared.schemas.DesiredModel.downgrades`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from sqlalchemy import select

from hub.db.models import Agent, ModelVersion
from hub.db.session import Database
from hub.mqtt.publisher import MqttPublisher
from hub.registry.service import RegistryError
from shared import topics
from shared.logs import kv
from shared.schemas import DesiredModel

log = logging.getLogger(__name__)


def bundle_url(public_url: str, name: str, version: str) -> str:
    """Where agents download a bundle (the agent token authorises it)."""
    return f"{public_url.rstrip('/')}/api/v1/models/{name}/{version}/bundle"


def desired_message(
    public_url: str,
    agent_id: str,
    model: ModelVersion,
    rollout_id: str | None,
    now: datetime,
    rollback: bool = False,
) -> tuple[str, DesiredModel]:
    """The retained desired-state topic and payload telling ``agent_id`` to run ``model``.

    ``rollback`` lets the agent install ``model`` when it is older than the one it runs.
    """
    desired = DesiredModel(
        agent_id=agent_id,
        model_name=model.name,
        model_version=model.version,
        bundle_url=bundle_url(public_url, model.name, model.version),
        bundle_sha256=model.sha256,
        rollout_id=rollout_id,
        set_at=now,
        rollback=rollback,
    )
    return topics.build(agent_id, topics.Kind.DESIRED), desired


def set_desired(
    db: Database,
    publisher: MqttPublisher,
    public_url: str,
    agent_id: str,
    model_name: str,
    model_version: str,
    rollout_id: str | None = None,
) -> tuple[Agent, DesiredModel]:
    """Record and publish that ``agent_id`` should run ``model_name`` ``model_version``.

    Creates the agent row when the agent never connected yet. The operator's explicit choice of a
    version below the one the agent reports running counts as a rollback: the message says
    ``rollback: true`` (without it the agent would refuse the downgrade).

    Raises:
        topics.TopicError: ``agent_id`` is not a valid agent id.
        RegistryError: 404 when the model version is not registered.
        hub.mqtt.publisher.BrokerUnavailable: the broker did not take the message (nothing stored).
    """
    topic = topics.build(agent_id, topics.Kind.DESIRED)
    now = datetime.now(timezone.utc)
    with db.transaction() as s:
        model = s.scalar(
            select(ModelVersion).where(ModelVersion.name == model_name, ModelVersion.version == model_version)
        )
        if model is None:
            raise RegistryError(
                404,
                "model_not_found",
                f"model {model_name} {model_version} is not registered; "
                "upload it first (POST /api/v1/models)",
            )
        agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
        if agent is None:
            agent = Agent(agent_id=agent_id, lab="", state="unknown", vitals={})
            s.add(agent)
        agent.desired_model_name = model_name
        agent.desired_model_version = model_version
        agent.desired_set_at = now
        _topic, desired = desired_message(public_url, agent_id, model, rollout_id, now)
        if desired.downgrades(agent.model_name, agent.model_version):
            desired = desired.model_copy(update={"rollback": True})
        s.flush()
        publisher.publish(topic, desired.to_json(), retain=True, qos=1)
    log.info(
        kv("desired_set", agent=agent_id, model=model_name, version=model_version, rollback=desired.rollback)
    )
    return agent, desired
