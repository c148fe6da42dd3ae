"""Training jobs: what an operator queues on the hub and what a ``leukonet trainer serve`` reports.

Defined once here (pydantic v2) because both sides speak it over the hub's REST API
(``/api/v1/training-jobs``):

* an operator (dashboard or ``leukonet training queue``) sends a :class:`TrainingJobSpec`;
* a trainer claims the oldest queued job, reports :class:`JobProgress` while it runs, and ends
  it with :class:`JobFinish` (bundle published and verified by the hub) or :class:`JobFailure`.

The trainer names itself in the claim body (:class:`ClaimRequest`) and with the query parameter
``?worker=NAME`` on ``/progress``, ``/finish`` and ``/fail`` (only the worker holding a running
job may report on it).

Job states (:data:`JOB_STATES`): ``queued`` -> ``running`` -> ``succeeded`` | ``failed``;
``queued`` -> ``cancelled``; a running job whose cancellation was requested ends ``cancelled``
when the trainer stops it. Paths in a spec are paths **on the trainer**, relative to its
``data_root`` / ``checkpoint_root`` (the trainer refuses anything that escapes them).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.bundle import SEMVER_RE


class JobState(str, Enum):
    """A training job's state, the one definition the hub, its API and the operator CLI share."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:  # f"training.{state}" -> "training.failed", as the audit log expects
        return self.value


JOB_STATES: tuple[str, ...] = tuple(s.value for s in JobState)
ACTIVE_STATES: tuple[str, ...] = (JobState.QUEUED.value, JobState.RUNNING.value)
FINAL_STATES: tuple[str, ...] = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
MODEL_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_ERROR_CHARS = 4000


def _relative_path(value: str | None, field: str) -> str | None:
    """A trainer-side path: relative, no ``..`` parts (the trainer joins it to its root)."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        raise ValueError(f"{field} is empty")
    parts = text.replace("\\", "/").split("/")
    if text.startswith(("/", "~")) or ".." in parts:
        raise ValueError(
            f"{field} {value!r} must be relative to the trainer's root folder, without '..' "
            "(e.g. all-idb2-import)"
        )
    return text


class TrainingJobSpec(BaseModel):
    """One training run as queued by an operator: the model to produce and how to train it."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="training job")

    name: str = Field(min_length=1, max_length=128, pattern=MODEL_NAME_RE, title="model name to publish")
    version: str = Field(pattern=SEMVER_RE, max_length=64, title="model version to publish (X.Y.Z)")
    dataset: str = Field(
        min_length=1,
        max_length=1024,
        title="data set on the trainer, relative to its data_root: an import folder "
        "(`leukonet trainer import`) or one sub-folder per class",
    )
    mode: Literal["auto", "scratch", "finetune", "bottleneck"] = Field(
        "auto", title="training mode (auto: bottleneck with a checkpoint, else scratch)"
    )
    checkpoint: str | None = Field(
        None,
        max_length=1024,
        title="pretrained checkpoint prefix relative to the trainer's "
        "checkpoint_root, e.g. inception_v3.ckpt",
    )
    image_size: int = Field(299, ge=75, le=1024, title="network input size in pixels")
    depth_multiplier: float = Field(1.0, gt=0.0, le=2.0, title="Inception channel width multiplier")
    steps: int = Field(1000, ge=1, le=10_000_000, title="training steps")
    batch_size: int = Field(16, ge=1, le=1024, title="images per step")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, title="initial learning rate")
    seed: int = Field(0, ge=0, le=2**31 - 1, title="seed of split, initialisation and augmentation")
    class_weighting: Literal["balanced", "none"] = Field("balanced", title="class weighting")
    trainable_scopes: list[str] | None = Field(
        None, max_length=64, title="finetune stage 2 scopes (default: every layer)"
    )
    stage1_steps: int | None = Field(None, ge=0, title="finetune: steps training only the heads")
    augmentations: int = Field(4, ge=1, le=64, title="bottleneck: augmented copies per image")
    positive_label: str | None = Field(None, max_length=64, title="disease label for sensitivity etc.")
    int8: bool = Field(False, title="also quantize to INT8 (NNCF) and record its accuracy delta")

    @field_validator("dataset")
    @classmethod
    def _dataset_relative(cls, v: str) -> str:
        return _relative_path(v, "dataset") or v

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_relative(cls, v: str | None) -> str | None:
        return _relative_path(v, "checkpoint")

    @model_validator(mode="after")
    def _consistent(self) -> TrainingJobSpec:
        if self.mode in ("finetune", "bottleneck") and self.checkpoint is None:
            raise ValueError(f"mode {self.mode} needs a checkpoint (e.g. inception_v3.ckpt)")
        if self.mode == "scratch" and self.checkpoint is not None:
            raise ValueError("mode scratch trains without a checkpoint; choose finetune or bottleneck")
        if self.stage1_steps is not None and self.stage1_steps > self.steps:
            raise ValueError(f"stage1_steps {self.stage1_steps} exceeds steps {self.steps}")
        return self


class ClaimRequest(BaseModel):
    """``POST /training-jobs/claim``: a trainer asks for the oldest queued job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        title="trainer name (one job at a time per worker)",
    )


class JobProgress(BaseModel):
    """``POST /training-jobs/<id>/progress``: where a running job is (the answer says whether to stop)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phase: str = Field(min_length=1, max_length=64, title="task, e.g. scan, train, parity, publish")
    done: int = Field(ge=0, title="units done in this phase")
    total: int = Field(ge=0, title="units in this phase")
    eta_s: float | None = Field(None, ge=0, title="seconds left in this phase")
    detail: dict[str, str] = Field(default_factory=dict, max_length=16, title="e.g. loss, acc")


class JobFinish(BaseModel):
    """``POST /training-jobs/<id>/finish``: the bundle is published; the hub checks it is in its registry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(min_length=1, max_length=128, pattern=MODEL_NAME_RE)
    model_version: str = Field(pattern=SEMVER_RE, max_length=64)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", title="sha256 of the published bundle")
    metrics: dict[str, Any] = Field(default_factory=dict, title="test-split metrics from the manifest")
    parity: dict[str, float] = Field(default_factory=dict, title="parity figures from the manifest")
    elapsed_s: float = Field(0.0, ge=0)


class JobFailure(BaseModel):
    """``POST /training-jobs/<id>/fail``: the job stopped; nothing was published.

    ``cancelled`` is true when the trainer stopped because the operator asked it to.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    error: str = Field(min_length=1, title="what went wrong, in one message")
    cancelled: bool = False

    @field_validator("error")
    @classmethod
    def _bounded(cls, v: str) -> str:
        return v if len(v) <= MAX_ERROR_CHARS else v[: MAX_ERROR_CHARS - 3] + "..."
