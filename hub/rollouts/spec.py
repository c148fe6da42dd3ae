"""What an operator asks for when starting a rollout, and the states rollouts and targets go through."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.schemas import AgentId


class RolloutState(str, Enum):
    """``running`` advances stage by stage; ``paused`` waits for an operator; the rest are final."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


ACTIVE_ROLLOUT_STATES = (RolloutState.RUNNING.value, RolloutState.PAUSED.value)


class TargetState(str, Enum):
    """One agent's progress within a rollout."""

    PENDING = "pending"  # its stage has not started
    DESIRED = "desired"  # desired state published, nothing reported yet
    DOWNLOADING = "downloading"  # the agent reported downloading / verifying
    SUCCEEDED = "succeeded"  # the agent activated the rollout's model
    FAILED = "failed"  # the agent reported failed (or rolled back on its own)
    TIMED_OUT = "timed_out"  # no report within the rollout's timeout
    SKIPPED = "skipped"  # the rollout ended before this agent's stage started
    ROLLING_BACK = "rolling_back"  # desired set back to the previous model
    ROLLED_BACK = "rolled_back"  # the agent reports the previous model again
    ROLLBACK_FAILED = "rollback_failed"  # no previous model to return to, or the agent failed it


IN_PROGRESS = (TargetState.DESIRED.value, TargetState.DOWNLOADING.value)
FAILURES = (TargetState.FAILED.value, TargetState.TIMED_OUT.value)
# states in which a later report from the agent still changes the target
WATCHED = (
    TargetState.DESIRED.value,
    TargetState.DOWNLOADING.value,
    TargetState.SUCCEEDED.value,
    TargetState.FAILED.value,
    TargetState.TIMED_OUT.value,
    TargetState.ROLLING_BACK.value,
)


class TargetSpec(BaseModel):
    """Which agents: exactly one of ``all``, ``labs``, ``tags`` (agent or lab tags) or ``agents``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: bool = Field(False, title="every agent the hub knows")
    labs: list[str] = Field(default_factory=list, title="agents reporting one of these labs")
    tags: list[str] = Field(
        default_factory=list, title="agents carrying one of these tags (or whose lab does)"
    )
    agents: list[AgentId] = Field(default_factory=list, title="these agent ids (unknown ones are created)")

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetSpec:
        chosen = [k for k in ("labs", "tags", "agents") if getattr(self, k)] + (["all"] if self.all else [])
        if len(chosen) != 1:
            raise ValueError(
                "choose exactly one target: all, labs, tags or agents"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        return self

    def describe(self) -> str:
        if self.all:
            return "all agents"
        for key in ("labs", "tags", "agents"):
            values = getattr(self, key)
            if values:
                return f"{key}: {', '.join(values)}"
        return "nothing"


class RolloutRequest(BaseModel):
    """Body of ``POST /api/v1/rollouts``; unset policy fields take the hub's ``rollouts.*`` defaults."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name: str = Field(min_length=1, max_length=128, title="registered model name")
    model_version: str = Field(min_length=1, max_length=64, title="registered model version")
    target: TargetSpec = Field(title="which agents")
    stages: list[int] | None = Field(
        None, min_length=1, max_length=20, title="cumulative % per stage, ends at 100"
    )
    success_threshold: float | None = Field(None, gt=0, le=1, title="fraction of a stage to advance")
    error_threshold: float | None = Field(None, ge=0, lt=1, title="fraction of a stage allowed to fail")
    on_failure: Literal["pause", "rollback"] | None = Field(None, title="what the error threshold does")
    timeout_s: int | None = Field(None, ge=1, le=7 * 86400, title="seconds before a silent agent fails")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(not 0 < p <= 100 for p in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"stages must increase strictly within 1..100, got {v}")
        if v[-1] != 100:
            raise ValueError(f"the last stage must be 100 (every target), got {v[-1]}")
        return v
