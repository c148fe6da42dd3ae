"""The JSON shapes ``/api/v1`` answers with, as pydantic models for its OpenAPI document.

The routes build these bodies as dicts (:mod:`hub.api.serialize`, :mod:`hub.rollouts.report`);
the models here describe them for clients and for the schemathesis test, which checks every
response against them. Keep a model in step with the function named above it: nullable
columns are ``X | None``, and ``extra="forbid"`` makes an undocumented key a test failure.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from hub.rollouts.spec import RolloutState, TargetState
from shared.training import JobState


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ErrorDetail(_Out):
    code: str = Field(title="machine-readable reason, e.g. invalid_parameter")
    message: str = Field(title="what went wrong and what to do, for a person")


# built by hub.errors.error_response
class Error(_Out):
    """Every API error: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


# --- models ------------------------------------------------------------------------------------


# built by hub.api.serialize.model_json
class ModelVersionOut(_Out):
    """A registered model version."""

    name: str
    version: str
    sha256: str = Field(title="sha256 of the bundle zip")
    size_bytes: int
    labels: list[str]
    metrics: dict[str, Any]
    parity: dict[str, Any]
    architecture: str | None
    input: dict[str, Any] | None = Field(title="input tensor spec from the manifest")
    output: dict[str, Any] | None = Field(title="output tensor spec from the manifest")
    preprocessing: dict[str, Any] | None
    artifacts: dict[str, str] = Field(title="role -> file in the bundle")
    cells: dict[str, Any] | None = Field(
        title="the manifest's cells section (input kinds, finder, decision rule, field-level metrics); "
        "null: whole images only"
    )
    ood: dict[str, Any] | None = Field(
        title="the manifest's ood section (method, threshold, held-out flag rate); null: no unfamiliar flag"
    )
    dataset_fingerprint: str
    built_at: datetime | None = Field(title="when the trainer built the bundle")
    created_at: datetime = Field(title="when the hub registered it")
    uploaded_by: str
    bundle_url: str


class ModelList(_Out):
    items: list[ModelVersionOut]


class CompareRow(_Out):
    key: str = Field(title="field, or metrics.* / parity.* path")
    a: Any
    b: Any
    delta: float | None = Field(title="b - a when both are numbers")
    same: bool


# built by hub.api.models.compare_models
class ModelComparison(_Out):
    """``GET /models/compare``: both versions and their rows."""

    a: ModelVersionOut
    b: ModelVersionOut
    rows: list[CompareRow]


# --- agents and labs ---------------------------------------------------------------------------


# built by hub.api.serialize.agent_json
class AgentOut(_Out):
    """An agent as it last reported and what the hub wants it to run."""

    agent_id: str
    lab: str
    state: str = Field(title="online, offline, unknown before its first status, or revoked")
    model_name: str | None
    model_version: str | None
    desired_model_name: str | None
    desired_model_version: str | None
    desired_set_at: datetime | None
    device: str | None
    precision: str | None
    execution_precision: str | None
    last_seen: datetime | None
    vitals: dict[str, Any]
    tags: list[str]
    enrolled_at: datetime | None = Field(title="when it redeemed an enrollment token")
    revoked_at: datetime | None = Field(title="when an admin revoked it (its messages are refused)")


class AgentDetail(AgentOut):
    """One agent, with the tags its lab carries."""

    lab_tags: list[str]


class AgentList(_Out):
    items: list[AgentOut]


class ModelEventOut(_Out):
    event: str
    model_name: str
    model_version: str
    rollout_id: str | None
    detail: str
    sent_at: datetime
    received_at: datetime


# built by hub.rollouts.report.history_json
class HistoryEntry(_Out):
    """A state change of a rollout (``agent_id`` null) or of one target."""

    rollout_id: str
    agent_id: str | None
    state: str
    detail: str
    at: datetime


class HistoryList(_Out):
    items: list[HistoryEntry]


class AgentHistory(_Out):
    """An agent's model events (newest first) and its rollout target changes."""

    agent_id: str
    events: list[ModelEventOut]
    rollouts: list[HistoryEntry]


class LabOut(_Out):
    lab: str
    agents: int = Field(title="agents reporting this lab")
    tags: list[str]


class LabList(_Out):
    items: list[LabOut]


# --- classifications ---------------------------------------------------------------------------


# built by hub.api.serialize.classification_json
class ClassificationOut(_Out):
    """One classified image."""

    result_id: str
    agent_id: str
    lab: str
    image_name: str
    image_sha256: str
    label: str
    confidence: float
    probabilities: dict[str, float]
    low_confidence: bool
    model_name: str
    model_version: str
    device: str
    precision: str | None
    execution_precision: str | None
    timings: dict[str, float]
    captured_at: datetime
    received_at: datetime
    input_kind: Literal["cell", "field"] | None = Field(
        title="cell or field; null from agents before payload schema_version 3 (one image, one cell)"
    )
    unfamiliar: bool = Field(title="the input looked unlike the model's training images")
    ood_score: float | None = Field(title="out-of-distribution score (higher: stranger)")
    specimen_id: str | None = Field(title="specimen / accession id the agent was given")
    decision_rule: str | None = Field(title="a field's decision rule in words")
    cell_counts: dict[str, int] | None = Field(title="a field's cells per predicted label")


class CellOut(_Out):
    """One white cell of a field."""

    index: int = Field(title="0-based position in the field's cells (the dashboard numbers from 1)")
    box: list[int] = Field(min_length=4, max_length=4, title="x, y, width, height in image pixels")
    label: str
    confidence: float
    probabilities: dict[str, float]
    unfamiliar: bool
    ood_score: float | None


# built by hub.api.serialize.classification_detail_json
class ClassificationDetail(ClassificationOut):
    """One result with its cells (a field's; empty for a single-cell image)."""

    cells: list[CellOut]


# --- ingest ------------------------------------------------------------------------------------


class IngestIdle(_Out):
    """No ingest worker runs in this web process."""

    running: Literal[False]
    note: str


# built by shared.loops.Loops.snapshot
class LoopState(_Out):
    alive: bool
    restarts: int
    last_activity_age_s: float | None = Field(title="seconds since the loop last did something")


# built by hub.ingest.stats.IngestStats.snapshot
class IngestCounters(BaseModel):
    """Counters of the ingest worker running in this process (more counters may be added)."""

    model_config = ConfigDict(extra="allow")

    running: bool
    connected: bool
    received: int
    stored: int
    duplicates: int
    statuses: int
    events: int
    batches: int
    db_errors: int
    invalid: dict[str, int] = Field(title="refused messages per reason")
    invalid_total: int
    last_commit_at: datetime | None
    reconcile_errors: int = Field(title="rollout reconciliations after a commit that failed")
    loops: dict[str, LoopState] = Field(title="the worker's loops by name")


class IngestStatsOut(RootModel[IngestCounters | IngestIdle]):
    """``GET /ingest/stats``: the counters, or a note that no worker runs here."""


# --- rollouts ----------------------------------------------------------------------------------


class Counts(_Out):
    size: int
    succeeded: int
    failed: int
    in_progress: int
    pending: int
    rolled_back: int
    by_state: dict[str, int]


class StageGroup(Counts):
    stage: int = Field(title="1-based stage")
    percent: int = Field(title="cumulative % of targets by the end of this stage")
    planned: int = Field(title="targets planned for this stage")


class TargetFailure(_Out):
    agent_id: str
    stage: int
    state: str
    detail: str
    updated_at: datetime


# built by hub.rollouts.report.target_json
class TargetOut(_Out):
    """One agent in a rollout."""

    agent_id: str
    stage: int
    state: TargetState
    previous_model_name: str | None
    previous_model_version: str | None
    detail: str
    failure: str
    desired_at: datetime | None
    updated_at: datetime


# built by hub.rollouts.report.rollout_json
class RolloutOut(_Out):
    """A rollout with per-stage progress and its failures."""

    rollout_id: str
    model_name: str
    model_version: str
    state: RolloutState
    reason: str
    target: dict[str, Any] = Field(title="the TargetSpec it was started with")
    target_description: str
    stages: list[int]
    current_stage: int = Field(title="1-based")
    success_threshold: float
    error_threshold: float
    on_failure: str
    timeout_s: int
    acknowledged_failures: int
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    totals: Counts
    groups: list[StageGroup]
    failures: list[TargetFailure]


class RolloutDetail(RolloutOut):
    """One rollout with every target."""

    targets: list[TargetOut]


class RolloutList(_Out):
    items: list[RolloutOut]


# built by hub.rollouts.report.audit_json
class AuditEntryOut(_Out):
    """Who did what."""

    id: int
    at: datetime
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


class AuditList(_Out):
    items: list[AuditEntryOut]


# --- training jobs -----------------------------------------------------------------------------


# built by hub.api.serialize.training_job_json
class TrainingJobOut(_Out):
    """A training job."""

    job_id: str
    state: JobState
    spec: dict[str, Any] = Field(title="the TrainingJobSpec as queued")
    progress: dict[str, Any] | None = Field(title="the last JobProgress report")
    error: str | None
    result: dict[str, Any] | None = Field(title="the JobFinish report")
    worker: str | None
    cancel_requested: bool
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class TrainingJobList(_Out):
    items: list[TrainingJobOut]


class ProgressAck(_Out):
    """The answer to a progress report: stop when ``cancel_requested``."""

    cancel_requested: bool
    state: JobState
