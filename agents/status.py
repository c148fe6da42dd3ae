"""The agent's status: what the hub shows for one agent, computed on demand.

:class:`StatusReport` builds a :class:`shared.schemas.AgentStatus` from the model manager (active
model, device, precisions; none before the first model), the vitals (disk, outbox depth, inference
times) and the loop registry (liveness, restarts and last activity of every loop). The MQTT link
publishes it, retained: on connect, every ``status_interval_s``, after a model change, and with
``state=offline`` as its last will and goodbye.
"""

from __future__ import annotations

from agents.config import AgentConfig
from agents.models import ModelManager
from agents.outbox import Outbox
from agents.vitals import InferenceStats, collect_vitals
from shared.loops import Loops
from shared.schemas import AgentState, AgentStatus, LoopState


class StatusReport:
    """Callable: ``report(state)`` is the agent's :class:`AgentStatus` now."""

    def __init__(
        self, config: AgentConfig, models: ModelManager, outbox: Outbox, stats: InferenceStats, loops: Loops
    ) -> None:
        self.config = config
        self.models = models
        self.outbox = outbox
        self.stats = stats
        self.loops = loops

    def __call__(self, state: AgentState = AgentState.ONLINE) -> AgentStatus:
        active = self.models.active
        vitals = collect_vitals(self.config.state_path, self.stats, self.outbox.depth())
        return AgentStatus(
            agent_id=self.config.agent_id,
            state=state,
            lab=self.config.lab,
            model_name=active.name if active else None,
            model_version=active.version if active else None,
            device=active.backend.device if active else self.config.device,
            precision=active.backend.precision if active else None,
            execution_precision=active.backend.execution_precision if active else None,
            vitals=vitals,
            loops={name: LoopState.model_validate(s) for name, s in self.loops.snapshot().items()},
        )
