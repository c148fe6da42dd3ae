"""One training run's contract: its settings, its outputs and the layout of its work folder.

:class:`TrainConfig` is everything a run depends on (recorded in the bundle's manifest);
:class:`TrainResult` is what it produced (``work_dir/train_result.json``), whichever mode trained
it. Both training modules (:mod:`trainer.train`, :mod:`trainer.bottleneck`), evaluation and the
pipeline read them from here. No TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.cells.spec import CellAnalysisSpec, DecisionRule, FinderSpec, InputKind
from trainer.nets import get_network

TrainMode = Literal["scratch", "finetune", "bottleneck"]
OptimizerName = Literal["adam", "momentum", "rmsprop"]
# The work folder (TrainConfig.work_dir) of a run, as every mode writes it:
TENSORBOARD_DIR = "tensorboard"
SPLIT_FILE = "split.json"
RESULT_FILE = "train_result.json"
CHECKPOINT_DIR = "checkpoints"


class TrainConfig(BaseModel):
    """Everything one training run depends on; recorded in the bundle's manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="training run")

    data_dir: Path = Field(
        title="import folder (`leukonet trainer import`: its split and TFRecords) or a "
        "class-per-folder image set (one sub-folder per label)"
    )
    work_dir: Path = Field(title="folder for the split, checkpoints and results")
    network: str = Field("inception_v3", title="network family (see trainer.nets)")
    mode: TrainMode = Field(
        "scratch", title="training mode (default: bottleneck with a checkpoint, else scratch)"
    )
    checkpoint: Path | None = Field(
        None, title="pretrained checkpoint prefix or folder (finetune, bottleneck)"
    )
    checkpoint_exclusions: tuple[str, ...] | None = Field(
        None, title="scopes not restored from the checkpoint (default: the network's logits heads)"
    )
    trainable_scopes: tuple[str, ...] | None = Field(
        None, title="finetune stage 2: scopes trained (default: every trainable variable)"
    )
    stage1_steps: int | None = Field(
        None, ge=0, title="finetune: steps training only the heads (default steps/2)"
    )
    stage2_lr_factor: float = Field(0.1, gt=0.0, le=1.0, title="finetune stage 2 learning-rate factor")
    augmentations: int = Field(4, ge=1, le=64, title="bottleneck: augmented copies per training image")
    resume: bool = Field(False, title="continue from the latest checkpoint in work_dir/checkpoints")
    image_size: int = Field(299, ge=75, le=1024, title="square network input size in pixels")
    depth_multiplier: float = Field(1.0, gt=0.0, le=2.0, title="Inception channel width multiplier")
    steps: int = Field(1000, ge=1, le=10_000_000, title="training steps")
    batch_size: int = Field(16, ge=1, le=1024, title="images per step")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, title="initial learning rate")
    optimizer: OptimizerName = Field("adam", title="optimizer")
    weight_decay: float = Field(4e-5, ge=0.0, title="L2 weight decay")
    batch_norm_decay: float = Field(0.9, gt=0.0, lt=1.0, title="batch-norm moving-average decay")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, title="label smoothing")
    class_weighting: Literal["none", "balanced"] = Field(
        "balanced", title="weight each example by n / (classes * n_class) to offset imbalance"
    )
    val_fraction: float = Field(0.15, ge=0.0, lt=1.0, title="share of each class for validation")
    test_fraction: float = Field(0.15, ge=0.0, lt=1.0, title="share of each class for the test split")
    seed: int = Field(0, ge=0, title="seed of the split, initialisation and augmentation")
    checkpoint_every: int = Field(200, ge=1, title="steps between checkpoints")
    eval_every: int = Field(100, ge=0, title="steps between validation passes (0: at the end only)")
    threads: int = Field(0, ge=0, le=256, title="TensorFlow intra-op threads (0: one per core)")

    @model_validator(mode="before")
    @classmethod
    def _default_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mode") in (None, "auto"):
            data = {**data, "mode": "bottleneck" if data.get("checkpoint") else "scratch"}
        return data

    @model_validator(mode="after")
    def _mode_needs_checkpoint(self) -> TrainConfig:
        if self.mode in ("finetune", "bottleneck") and self.checkpoint is None:
            raise ValueError(
                f"mode {self.mode} needs a pretrained checkpoint (--checkpoint, e.g. the slim "
                "inception_v3.ckpt); use mode scratch to train without one"
            )
        if self.mode == "scratch" and self.checkpoint is not None:
            raise ValueError("mode scratch ignores --checkpoint; choose finetune or bottleneck to use it")
        if self.stage1_steps is not None and self.stage1_steps > self.steps:
            raise ValueError(f"stage1_steps {self.stage1_steps} exceeds steps {self.steps}")
        return self

    @field_validator("network")
    @classmethod
    def _known_network(cls, v: str) -> str:
        get_network(v)
        return v

    @property
    def exclusions(self) -> tuple[str, ...]:
        """Scopes a checkpoint restore skips."""
        if self.checkpoint_exclusions is not None:
            return self.checkpoint_exclusions
        return get_network(self.network).checkpoint_exclusions

    @property
    def head_steps(self) -> int:
        """Finetune stage 1 length (steps training only the heads)."""
        return self.stage1_steps if self.stage1_steps is not None else self.steps // 2

    def for_manifest(self) -> dict[str, Any]:
        """The run's settings without machine-local paths (the checkpoint by its file name only)."""
        data = self.model_dump(mode="json", exclude={"data_dir", "work_dir", "threads", "checkpoint"})
        data["checkpoint"] = self.checkpoint.name if self.checkpoint else None
        return data


class HistoryPoint(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    step: int
    loss: float = Field(title="total loss of the step's batch (incl. regularisation)")
    accuracy: float = Field(title="training-batch accuracy")
    val_accuracy: float | None = Field(None, title="validation accuracy at this step")


class TrainResult(BaseModel):
    """What :func:`train` produced; also ``work_dir/train_result.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    checkpoint_path: str = Field(title="checkpoint prefix (…/model.ckpt-<step>)")
    labels: list[str]
    history: list[HistoryPoint]
    val_accuracy: float | None
    steps: int
    elapsed_s: float
    dataset_fingerprint: str
    split_path: str
    config: TrainConfig
    phases_s: dict[str, float] = Field(
        default_factory=dict, title="seconds per phase, graph building excluded (bottleneck: compute, layer)"
    )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainResult:
        """Read ``train_result.json``.

        Raises:
            FileNotFoundError: no training result there (run ``leukonet trainer train`` first).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no training result; run `leukonet trainer train` first")
        return cls.model_validate_json(p.read_text())


class CellOptions(BaseModel):
    """A *cell model*: one that classifies single white cells and, through the finder, whole fields.

    What the bundle's ``cells`` section (:class:`shared.cells.spec.CellAnalysisSpec`) says, plus
    the held-out fields (``eval_fields``, with ground truth, see :mod:`trainer.fields`) on which
    the finder and the whole field chain are evaluated before the model is bundled.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, title="cell analysis")

    decision: DecisionRule = Field(title="how a field's label follows from its cells")
    finder: FinderSpec = Field(default_factory=FinderSpec, title="white-cell finder settings")
    input_kinds: list[InputKind] = Field(
        default_factory=lambda: [InputKind.CELL, InputKind.FIELD], min_length=1, title="inputs accepted"
    )
    field_min_side_px: int = Field(
        640, ge=64, le=100_000, title="an image whose longer side is at least this is a field"
    )
    eval_fields: Path | None = Field(None, title="folder of held-out fields with ground truth (NAME.json)")

    def check_labels(self, labels: list[str]) -> None:
        """Raise ValueError when the decision rule names a label the model does not have."""
        rule = self.decision
        missing = [lab for lab in (*rule.positive_labels, rule.negative_label) if lab not in labels]
        if missing:
            raise ValueError(
                f"the cell decision rule names {missing}, which the model does not have (labels {labels}); "
                "set --positive-label / --negative-label to the model's labels"
            )

    def spec(self, metrics: dict[str, object] | None = None) -> CellAnalysisSpec:
        """The manifest's ``cells`` section, with the evaluation ``metrics``."""
        return CellAnalysisSpec(
            input_kinds=self.input_kinds,
            field_min_side_px=self.field_min_side_px,
            finder=self.finder,
            decision=self.decision,
            metrics=metrics or {},
        )
