"""The agent's configuration: one strict, typed object loaded once at start-up.

Load it with ``AgentConfig.load(path, **overrides)`` (YAML file, then ``LEUKONET_AGENT_*`` environment
variables, nested with ``__``, e.g. ``LEUKONET_AGENT_MQTT__HOST``). Unknown or invalid fields raise
:class:`shared.config.ConfigError` naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from agents.backends.base import IrPrecision
from agents.specimen import DEFAULT_PATTERN, compile_pattern
from shared.config import StrictConfig
from shared.mqtt import MqttSettings
from shared.preprocessing import DEFAULT_MAX_PIXELS
from shared.topics import validate_agent_id

#: ``auto`` resolves per device (:func:`effective_precision`); INT8 and BF16 are only ever run when asked.
Precision = Literal["auto", "FP32", "FP16", "BF16", "INT8"]


class MqttConfig(MqttSettings):
    """How the agent reaches the MQTT broker (:class:`shared.mqtt.MqttSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="MQTT broker")


class HubConfig(BaseModel):
    """Where bundles are downloaded from and with which token."""

    model_config = ConfigDict(extra="forbid", title="hub")

    url: str = Field(
        "http://127.0.0.1:8080",
        min_length=1,
        title="hub base URL: `check` tests it, and bundles are downloaded only from its origin",
    )
    token: SecretStr | None = Field(None, title="bearer token with the `agent` role")
    timeout_s: float = Field(30.0, gt=0, le=600, title="HTTP connect/read timeout (s)")
    download_attempts: int = Field(
        6, ge=1, le=100, title="tries per bundle download; each resumes the partial file (HTTP Range)"
    )
    retry_backoff_s: float = Field(2.0, ge=0, le=600, title="wait before the first retry, doubling each time")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"hub url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


class PipelineConfig(BaseModel):
    """How images flow: decode threads feed the backend's asynchronous infer requests."""

    model_config = ConfigDict(extra="forbid", title="pipeline")

    decode_threads: int = Field(2, ge=1, le=32, title="threads reading, decoding and resizing images")
    infer_requests: int = Field(0, ge=0, le=64, title="OpenVINO infer requests (0: the device's optimum)")
    queue_size: int = Field(0, ge=0, le=4096, title="images waiting for a decode thread (0: automatic)")
    commit_batch: int = Field(32, ge=1, le=1024, title="most results committed per outbox transaction")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        le=2_000_000_000,
        title="largest image (width x height, read from its header) decoded; larger ones go to failed/",
    )


class OutboxConfig(BaseModel):
    """Limits of the on-disk outbox; at a limit the agent stops taking images (none is dropped)."""

    model_config = ConfigDict(extra="forbid", title="outbox")

    max_rows: int = Field(
        200_000, ge=1, title="results kept while the broker is unreachable; intake pauses at this cap"
    )
    min_free_disk_mb: float = Field(
        200.0, ge=0, title="free space the state_dir disk must keep; intake pauses below it"
    )
    alarm_interval_s: float = Field(60.0, gt=0, le=86400, title="repeat the 'outbox full' error this often")
    drain_rate_per_s: float = Field(
        500.0,
        ge=0,
        le=1_000_000,
        title="most backlog results per second while the outbox is deeper than backlog_rows (0: no "
        "limit); results classified meanwhile go first, at once",
    )
    backlog_rows: int = Field(
        1000, ge=1, title="an outbox deeper than this counts as a backlog (drained at drain_rate_per_s)"
    )


class MetricsConfig(BaseModel):
    """Prometheus metrics of the agent on an HTTP port of its own; off by default."""

    model_config = ConfigDict(extra="forbid", title="metrics")

    enabled: bool = Field(False, title="serve /metrics (Prometheus text format)")
    host: str = Field(
        "127.0.0.1", min_length=1, title="bind address (0.0.0.0 lets a Prometheus elsewhere scrape)"
    )
    port: int = Field(9108, ge=0, le=65535, title="TCP port (0: any free port)")


class HttpConfig(BaseModel):
    """The HTTP source: ``POST /classify`` (and the seed project's ``POST /Inference``)."""

    model_config = ConfigDict(extra="forbid", title="HTTP endpoint")

    enabled: bool = Field(False, title="serve the HTTP endpoint")
    host: str = Field("127.0.0.1", min_length=1, title="bind address (0.0.0.0 exposes it to the network)")
    port: int = Field(8090, ge=0, le=65535, title="TCP port (0: any free port)")
    token: SecretStr | None = Field(None, title="when set, requests need `Authorization: Bearer <token>`")
    max_upload_mb: float = Field(50.0, gt=0, le=4096, title="largest accepted image upload (MB)")
    result_timeout_s: float = Field(120.0, gt=0, le=3600, title="longest wait for a result (s)")


class CameraConfig(BaseModel):
    """The camera/video source: OpenCV ``VideoCapture``, one frame in every ``every_nth_frame``."""

    model_config = ConfigDict(extra="forbid", title="camera")

    enabled: bool = Field(False, title="read frames from a camera or video")
    source: str = Field("0", min_length=1, title="device index (0), device path, video file or stream URL")
    every_nth_frame: int = Field(30, ge=1, le=100_000, title="classify one frame in this many")
    name_prefix: str = Field("camera", min_length=1, max_length=64, title="image_name prefix of frames")
    reopen_s: float = Field(5.0, gt=0, le=3600, title="wait before reopening a camera that stopped")
    stop_at_end: bool = Field(True, title="a video file that ends stops the source (cameras reopen)")


MIB = 1024 * 1024


class EvidenceConfig(BaseModel):
    """What the agent sends the hub of each image it classified, and how (docs/evidence.md)."""

    model_config = ConfigDict(extra="forbid", title="evidence images")

    mode: Literal["original", "preview", "none"] = Field(
        "preview",
        title="original: the file's bytes; preview: a JPEG no larger than preview_max_side; none: no "
        "image leaves the lab (results still do)",
    )
    preview_max_side: int = Field(1024, ge=64, le=8192, title="longest side of a preview JPEG, in pixels")
    jpeg_quality: int = Field(85, ge=30, le=100, title="JPEG quality of previews")
    max_bytes: int = Field(
        32 * MIB,
        ge=64 * 1024,
        le=1024 * MIB,
        title="largest evidence item; an original over it is sent as a preview (keep it <= the hub's "
        "evidence.max_bytes)",
    )
    queue_max_mb: float = Field(
        1024.0,
        ge=1,
        le=1_000_000,
        title="evidence kept in the outbox while the hub is unreachable; beyond it the oldest evidence "
        "is dropped with a warning (results never are)",
    )
    upload_concurrency: int = Field(2, ge=1, le=16, title="uploads in flight at once")
    retry_min_s: float = Field(1.0, gt=0, le=600, title="first wait after a failed upload (s)")
    retry_max_s: float = Field(
        300.0, gt=0, le=86400, title="longest wait between tries (s); waits double with jitter up to it"
    )
    timeout_s: float = Field(60.0, gt=0, le=600, title="HTTP connect/read timeout of one upload (s)")
    max_attempts: int = Field(
        50, ge=1, le=100_000, title="tries of one item the hub keeps failing (HTTP 5xx) before it is dropped"
    )

    @model_validator(mode="after")
    def _bounds(self) -> EvidenceConfig:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(
                f"retry_min_s ({self.retry_min_s:g}) must not exceed retry_max_s ({self.retry_max_s:g})"
            )
        if self.max_bytes > self.queue_max_mb * MIB:
            raise ValueError(
                f"max_bytes ({self.max_bytes}) is larger than queue_max_mb ({self.queue_max_mb:g} MiB): "
                "one item would not fit the queue; raise queue_max_mb or lower max_bytes"
            )
        return self

    @property
    def queue_max_bytes(self) -> int:
        return int(self.queue_max_mb * MIB)


class SpecimenConfig(BaseModel):
    """How a specimen (accession) id is read from an image's name (:mod:`agents.specimen`)."""

    model_config = ConfigDict(extra="forbid", title="specimen ids")

    pattern: str | None = Field(
        DEFAULT_PATTERN,
        title="regular expression with a named group (?P<specimen>...), searched in the image's path "
        "relative to its source (watch_dir; / separators); default: the first folder, else the file "
        "name's prefix before '_'; null: no specimen ids",
    )

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            compile_pattern(v)  # raises ValueError naming the problem
        return v


class AgentConfig(StrictConfig):
    """Everything an edge agent needs; see the README's agent section for an example YAML."""

    model_config = SettingsConfigDict(env_prefix="LEUKONET_AGENT_", title="leukonet agent")
    section = "agent"

    agent_id: str = Field(title="agent id (topic-safe, unique in the fleet)")
    lab: str = Field("", max_length=128, title="lab name reported with every result")
    watch_dir: Path = Field(title="folder the microscope drops images into")
    done_dir: Path | None = Field(None, title="where classified images go (default watch_dir/done)")
    failed_dir: Path | None = Field(None, title="where undecodable images go (default watch_dir/failed)")
    state_dir: Path | None = Field(None, title="model store + outbox (default ./var/agent-<agent_id>)")
    backend: Literal["openvino", "fake"] = Field("openvino", title="inference backend")
    device: str = Field("AUTO", min_length=1, title="OpenVINO device name (CPU, GPU, NPU, MYRIAD, AUTO)")
    precision: Precision = Field(
        "auto",
        title=(
            "inference precision (auto: FP16 on MYRIAD, else FP32; BF16 needs a CPU with bf16 and the "
            "bundle's BF16 parity; INT8 needs the bundle's ir_int8)"
        ),
    )
    performance_hint: Literal["THROUGHPUT", "LATENCY"] = Field(
        "THROUGHPUT", title="OpenVINO PERFORMANCE_HINT for compile_model"
    )
    low_confidence_threshold: float = Field(0.8, ge=0.0, le=1.0, title="flag results below this confidence")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, title="MQTT broker")
    hub: HubConfig = Field(default_factory=HubConfig, title="hub")
    model_public_key: Path | None = Field(
        None, title="trainer's Ed25519 public key (PEM); required to accept any bundle"
    )
    status_interval_s: float = Field(30.0, gt=0, le=3600, title="status publish period (s)")
    poll_interval_s: float = Field(0.5, gt=0, le=60, title="watch-folder poll period (s)")
    settle_s: float = Field(1.0, ge=0, le=600, title="a file must keep its size+mtime this long")
    batch_size: int = Field(8, ge=1, le=256, title="most watch-folder files queued per poll")
    initial_model: Path | None = Field(None, title="bundle zip installed at first start (no active model)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", title="log level")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, title="pipeline")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, title="outbox limits")
    http: HttpConfig = Field(default_factory=HttpConfig, title="HTTP endpoint")
    camera: CameraConfig = Field(default_factory=CameraConfig, title="camera/video source")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, title="Prometheus metrics port")
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig, title="evidence images sent to the hub")
    specimen: SpecimenConfig = Field(default_factory=SpecimenConfig, title="specimen ids from image names")

    @field_validator("agent_id")
    @classmethod
    def _agent_id(cls, v: str) -> str:
        return validate_agent_id(v)

    @field_validator("precision")
    @classmethod
    def _precision_fits_device(cls, v: Precision, info: ValidationInfo) -> Precision:
        device = info.data.get("device")  # absent when device itself is invalid (reported on its own)
        if isinstance(device, str):
            effective_precision(v, device)  # raises ValueError for INT8 on MYRIAD
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _defaults_and_rules(self) -> AgentConfig:
        if self.done_dir is None:
            self.done_dir = self.watch_dir / "done"
        if self.failed_dir is None:
            self.failed_dir = self.watch_dir / "failed"
        if self.state_dir is None:
            self.state_dir = Path("var") / f"agent-{self.agent_id}"
        if self.done_dir == self.watch_dir or self.failed_dir == self.watch_dir:
            raise ValueError("done_dir and failed_dir must differ from watch_dir (files would be re-read)")
        if self.done_dir == self.failed_dir:
            raise ValueError("done_dir and failed_dir must be different folders")
        return self

    # The validator above fills these; the properties give mypy non-optional types.
    @property
    def done_path(self) -> Path:
        assert self.done_dir is not None
        return self.done_dir

    @property
    def failed_path(self) -> Path:
        assert self.failed_dir is not None
        return self.failed_dir

    @property
    def state_path(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir

    def effective_precision(self) -> IrPrecision:
        """The IR precision to load: FP16 for MYRIAD (NCS2 runs FP16 only) under ``auto``, else FP32."""
        return effective_precision(self.precision, self.device)


def effective_precision(precision: Precision, device: str) -> IrPrecision:
    """Resolve ``auto`` for ``device``: FP16 when the device list names MYRIAD, FP32 otherwise.

    ``INT8`` is returned as asked (the backend falls back to FP32 for a bundle without ``ir_int8``);
    ``BF16`` too (the backend refuses it on a device without bf16 or a bundle without BF16 parity).

    Raises:
        ValueError: ``INT8`` or ``BF16`` on a device list naming MYRIAD; the NCS2 runs FP16 IRs only.
    """
    myriad = "MYRIAD" in device.upper()
    if precision in ("INT8", "BF16") and myriad:
        raise ValueError(
            f"{precision} cannot run on device {device!r}: the NCS2 runs FP16 only; "
            "set precision to auto or FP16"
        )
    if precision != "auto":
        return precision
    return "FP16" if myriad else "FP32"
