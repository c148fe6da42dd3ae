"""The trainer service's settings: where to publish, with which token and key.

Loaded once by the CLI (``TrainerConfig.load``): YAML file (``--config``), then environment
variables ``LEUKONET_TRAINER_<FIELD>`` (e.g. ``LEUKONET_TRAINER_TOKEN``), then command-line
options, which win. Per-run training settings live in :class:`trainer.train_config.TrainConfig`.
"""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.config import StrictConfig


class TrainerConfig(StrictConfig):
    model_config = SettingsConfigDict(
        env_prefix="LEUKONET_TRAINER_", extra="forbid", env_nested_delimiter="__", validate_default=True
    )

    hub_url: str | None = Field(None, title="hub base URL to publish to, e.g. http://hub:8080")
    token: SecretStr | None = Field(None, title="hub API token with the trainer (or admin) role")
    signing_key: Path | None = Field(None, title="Ed25519 private key (PEM) that signs bundles")
    threads: int = Field(0, ge=0, le=256, title="TensorFlow intra-op threads (0: one per core)")
    log_level: str = Field("INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", title="log level")
    # `leukonet trainer serve` (jobs queued on the hub):
    worker: str = Field(
        default_factory=lambda: socket.gethostname()[:64] or "trainer",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        title="this trainer's name on the hub (default: host name)",
    )
    data_root: Path | None = Field(None, title="serve: folder holding the data sets jobs may name")
    checkpoint_root: Path | None = Field(None, title="serve: folder holding the pretrained checkpoints")
    work_root: Path = Field(Path("var/trainer-jobs"), title="serve: one work folder per job under it")
    poll_interval_s: float = Field(10.0, gt=0, le=3600, title="serve: seconds between claims when idle")
    progress_interval_s: float = Field(5.0, gt=0, le=600, title="serve: seconds between progress reports")
