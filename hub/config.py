"""The hub's configuration: one strict, typed object loaded once per process.

Load it with :meth:`HubConfig.load` (YAML file, then ``LEUKONET_HUB_*`` environment variables,
nested sections with ``__``, e.g. ``LEUKONET_HUB_MQTT__HOST``). Secrets (``secret_key``, API tokens,
the first admin's password, the MQTT password) are :class:`pydantic.SecretStr` so they never show up in
logs or reprs; they come from the file or the environment, never from code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from hub.review.policy import ReviewSettings
from hub.roles import Role
from shared.bundle import BundleLimits
from shared.config import ConfigError, StrictConfig
from shared.mqtt import MqttSettings

SECRET_KEY_MIN_CHARS = 32
PASSWORD_MIN_CHARS = 12
TOKEN_MIN_CHARS = 16
_GENERATE_HINT = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"

# The placeholder secrets docker/.env.example ships, exactly as written there (tokens taken out of
# LEUKONET_HUB_TOKENS). Anyone who has read the repository knows them, so no hub starts with one.
# tests/hub/test_web_security.py checks this set against the file: change both together.
PLACEHOLDER_SECRETS = frozenset(
    {
        "change-me",
        "change-me-to-64-random-characters",
        "change-me-admin-token-32chars",
        "change-me-trainer-token-32ch",
        "change-me-hub-mqtt-password",
        "change-me-enroll-token-lab-a",
        "change-me-enroll-token-lab-b",
        "change-me-prometheus-token",
        "change-me-grafana-password",
    }
)


def check_secret(value: str, what: str, min_chars: int = 0) -> None:
    """Refuse a placeholder from docker/.env.example or a value shorter than ``min_chars``.

    Args:
        value: the secret in clear.
        what: how the message names it (the field, e.g. ``"secret_key"``).
        min_chars: the shortest accepted length, 0 for no minimum.

    Raises:
        ValueError: naming ``what``, the rule broken and how to make a good value (the message
            itself never quotes the value).
    """
    if value in PLACEHOLDER_SECRETS:
        raise ValueError(
            f"{what} is a placeholder from docker/.env.example, which anyone can read; "
            f"replace it with a random value ({_GENERATE_HINT})"
        )
    if len(value) < min_chars:
        raise ValueError(
            f"{what} must be at least {min_chars} characters, got {len(value)}; {_GENERATE_HINT}"
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiToken(_Section):
    """One API client: a name for the logs, its secret token and its role."""

    name: str = Field(min_length=1, max_length=64, title="token owner (shown in logs)")
    token: SecretStr = Field(title=f"bearer token (at least {TOKEN_MIN_CHARS} characters)")
    role: Role = Field(title="role: admin, trainer or agent")

    @field_validator("token")
    @classmethod
    def _long_enough(cls, v: SecretStr) -> SecretStr:
        check_secret(v.get_secret_value(), "token", TOKEN_MIN_CHARS)
        return v


class MqttSection(MqttSettings):
    """How the hub reaches the MQTT broker (ingest worker and desired-state publisher): the shared
    connection settings (:class:`shared.mqtt.MqttSettings`) plus the hub's own."""

    client_id: str = Field(
        "leukonet-hub-ingest",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        title="stable client id of the ingest worker (persistent session); "
        "unique per worker when scaling out",
    )
    share_group: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]+$",
        title="shared-subscription group ($share/<group>/...) for N workers",
    )
    publish_timeout_s: float = Field(5.0, gt=0, le=60, title="how long to wait for the broker on publish")

    @field_validator("password")
    @classmethod
    def _not_a_placeholder(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_secret(v.get_secret_value(), "mqtt.password")
        return v


class BrokerSection(_Section):
    """The broker the hub can run itself (single-machine deployments and the demo)."""

    embedded: bool = Field(False, title="start a broker inside the hub (`serve` only)")
    port: int = Field(1883, ge=1, le=65535, title="loopback port of the embedded broker")
    implementation: Literal["auto", "mosquitto", "amqtt"] = Field(
        "auto",
        title="auto/mosquitto = a child mosquitto with dynamic security (refused when not installed); "
        "amqtt = in-process and anonymous, for a demo without Mosquitto only",
    )
    max_queued_messages: int = Field(100_000, ge=1000, title="mosquitto per-client queue limit")


class IngestSection(_Section):
    """Batching of result writes: one transaction per batch, PUBACK after commit."""

    batch_size: int = Field(1000, ge=1, le=10_000, title="results per transaction at most")
    batch_ms: int = Field(200, ge=1, le=60_000, title="longest wait for a batch to fill, in ms")
    auto_register_agents: bool = Field(
        False,
        title=(
            "take messages from agent ids the hub has never seen, registering them (demo and tests); "
            "off: such messages are refused and counted, register agents with `leukonet hub agents add`"
        ),
    )


class BundleSection(_Section):
    """Caps on uploaded bundles, checked before and while they are read (zip bombs are refused)."""

    max_manifest_kb: int = Field(1024, ge=1, le=65536, title="largest manifest.json, in KiB")
    max_unpacked_mb: int = Field(2048, ge=1, le=65536, title="largest total unpacked size, in MiB")
    max_files: int = Field(64, ge=3, le=10000, title="most files in one bundle")


class RolloutSection(_Section):
    """Defaults of new rollouts and how often the engine checks timeouts."""

    tick_s: float = Field(2.0, gt=0, le=300, title="seconds between rollout engine ticks (timeouts, retries)")
    default_stages: list[int] = Field(
        default_factory=lambda: [10, 50, 100], min_length=1, title="cumulative % of targets per stage"
    )
    default_success_threshold: float = Field(
        0.9, gt=0, le=1, title="fraction of a stage that must activate before the next stage starts"
    )
    default_error_threshold: float = Field(
        0.2, ge=0, lt=1, title="fraction of a stage that may fail before the rollout pauses or rolls back"
    )
    default_on_failure: Literal["pause", "rollback"] = Field(
        "pause", title="what the error threshold does: pause, or roll the rollout back"
    )
    default_timeout_s: int = Field(
        900, ge=1, le=7 * 86400, title="seconds an agent may take to report before it counts as failed"
    )

    @field_validator("default_stages")
    @classmethod
    def _stages(cls, v: list[int]) -> list[int]:
        increasing = all(a < b for a, b in zip(v, v[1:], strict=False))
        if not increasing or any(not 0 < p <= 100 for p in v) or v[-1] != 100:
            raise ValueError(f"stages must increase strictly within 1..100 and end at 100, got {v}")
        return v


class TrainingSection(_Section):
    """The training-job queue that ``leukonet trainer serve`` works from."""

    heartbeat_timeout_s: int = Field(
        1800,
        ge=10,
        le=7 * 86400,
        title="seconds a running training job may go without progress from its trainer before it is "
        "marked failed",
    )


class LoginSection(_Section):
    """Dashboard login throttling and session lifetime."""

    max_failures: int = Field(5, ge=1, le=100, title="wrong passwords in a row that lock an account")
    lockout_s: int = Field(900, ge=1, le=7 * 86400, title="seconds a locked account stays locked")
    max_failures_per_address: int = Field(
        20,
        ge=1,
        le=10_000,
        title="failed logins from one address within address_window_s before it is refused",
    )
    address_window_s: int = Field(900, ge=1, le=86400, title="window of the per-address throttle (s)")
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, title="a dashboard session ends this long after login"
    )
    secure_cookies: bool | None = Field(
        None, title="Secure flag on the session cookie; default: on when public_url is https"
    )


class EnrollmentSection(_Section):
    """Agent enrollment tokens and the broker accounts enrollment creates."""

    token_ttl_s: int = Field(86400, ge=60, le=30 * 86400, title="default lifetime of an enrollment token (s)")
    dynamic_security: bool = Field(
        False,
        title="manage per-agent broker accounts through Mosquitto's dynamic security plugin "
        "($CONTROL/dynamic-security/v1, as mqtt.username); the embedded broker always does",
    )


class EvidenceSection(_Section):
    """Evidence images agents upload (``PUT /api/v1/evidence/<sha256>``; docs/evidence.md)."""

    dir: Path | None = Field(None, title="folder of the evidence images (default data_dir/evidence)")
    max_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        title="largest evidence upload, in bytes; larger ones are refused (413) before being read",
    )
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        le=1_000_000_000,
        title="largest image (width x height, from its header) accepted as evidence",
    )


class RetentionSection(_Section):
    """How long results and evidence are kept; older ones are archived, then deleted (see
    :mod:`hub.retention`)."""

    results_days: int | None = Field(
        None, ge=1, le=36500, title="delete results captured longer ago than this (None: keep for ever)"
    )
    evidence_days: int | None = Field(
        None,
        ge=1,
        le=36500,
        title="delete evidence images stored longer ago than this, without archiving them (None: keep)",
    )
    archive_dir: Path | None = Field(
        None,
        title="where results are exported (gzipped JSON lines) before deletion; required with results_days",
    )
    batch_size: int = Field(5000, ge=100, le=100_000, title="results archived and deleted per transaction")
    interval_s: int = Field(3600, ge=60, le=7 * 86400, title="how often `hub serve` applies the policy")

    @model_validator(mode="after")
    def _archive_before_delete(self) -> RetentionSection:
        if self.results_days is not None and self.archive_dir is None:
            raise ValueError(
                "retention.archive_dir is required when retention.results_days is set: results are "
                "exported there before they are deleted (set it, or unset results_days to keep every result)"
            )
        return self


class HubConfig(StrictConfig):
    """Everything the hub processes (serve, ingest, migrate, check) need."""

    model_config = SettingsConfigDict(
        env_prefix="LEUKONET_HUB_", extra="forbid", env_nested_delimiter="__", validate_default=True
    )
    section = "hub"

    data_dir: Path = Field(Path("var/hub"), title="folder for the SQLite file, bundles and broker state")
    database_url: str | None = Field(
        None, title="SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...); default SQLite in data_dir"
    )
    public_url: str = Field(
        "http://127.0.0.1:8080",
        pattern=r"^https?://",
        title="URL agents use to reach this hub (bundle URLs are built from it)",
    )
    host: str = Field("127.0.0.1", title="web server bind address")
    port: int = Field(8080, ge=1, le=65535, title="web server port")
    web_timeout_s: float = Field(
        30.0, gt=0, le=600, title="`serve` drops a client whose next read or write takes longer (slowloris)"
    )
    secret_key: SecretStr | None = Field(
        None,
        title=f"key signing dashboard sessions, at least {SECRET_KEY_MIN_CHARS} random characters "
        "(required by serve)",
    )
    tokens: list[ApiToken] = Field(default_factory=list, title="API bearer tokens with their roles")
    admin_username: str = Field(
        "admin", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@-]+$", title="name of the first admin"
    )
    admin_password: SecretStr | None = Field(
        None,
        title=f"password of the first admin, at least {PASSWORD_MIN_CHARS} characters: created at start "
        "when the hub has no user yet (bootstrap only; later admins use `leukonet hub users`)",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, title="Ed25519 public key PEMs accepted on bundle upload"
    )
    max_upload_mb: int = Field(512, ge=1, le=8192, title="largest accepted request body, in MiB")
    bundles: BundleSection = Field(default_factory=BundleSection, title="bundle upload caps")
    mqtt: MqttSection = Field(default_factory=MqttSection, title="MQTT connection")
    broker: BrokerSection = Field(default_factory=BrokerSection, title="embedded broker")
    ingest: IngestSection = Field(default_factory=IngestSection, title="ingest batching")
    rollouts: RolloutSection = Field(default_factory=RolloutSection, title="staged rollouts")
    training: TrainingSection = Field(default_factory=TrainingSection, title="training job queue")
    login: LoginSection = Field(default_factory=LoginSection, title="dashboard login")
    enrollment: EnrollmentSection = Field(default_factory=EnrollmentSection, title="agent enrollment")
    retention: RetentionSection = Field(default_factory=RetentionSection, title="result retention")
    evidence: EvidenceSection = Field(default_factory=EvidenceSection, title="evidence images")
    review: ReviewSettings = Field(default_factory=ReviewSettings, title="review and sign-off")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", title="log level")

    def bundle_limits(self) -> BundleLimits:
        """The caps uploads are verified against (:class:`shared.bundle.BundleLimits`)."""
        return BundleLimits(
            max_manifest_bytes=self.bundles.max_manifest_kb * 1024,
            max_unpacked_bytes=self.bundles.max_unpacked_mb * 1024 * 1024,
            max_files=self.bundles.max_files,
        )

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @field_validator("secret_key")
    @classmethod
    def _strong_secret_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_secret(v.get_secret_value(), "secret_key", SECRET_KEY_MIN_CHARS)
        return v

    @field_validator("admin_password")
    @classmethod
    def _strong_password(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_secret(v.get_secret_value(), "admin_password", PASSWORD_MIN_CHARS)
        return v

    @field_validator("database_url")
    @classmethod
    def _no_placeholder_db_password(cls, v: str | None) -> str | None:
        # compose builds this URL from POSTGRES_PASSWORD, so the placeholder can arrive here too
        password = urlsplit(v).password if v else None
        if password is not None:
            check_secret(unquote(password), "the password in database_url (POSTGRES_PASSWORD in docker/.env)")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> HubConfig:
        names = [t.name for t in self.tokens]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tokens: names must be unique, repeated: {', '.join(dupes)}")
        secrets_ = [t.token.get_secret_value() for t in self.tokens]
        if len(set(secrets_)) != len(secrets_):
            raise ValueError("tokens: two entries share the same token; give each client its own")
        return self

    @property
    def evidence_dir(self) -> Path:
        """Where evidence images are stored (``evidence.dir``, default ``data_dir/evidence``)."""
        return self.evidence.dir if self.evidence.dir is not None else self.data_dir / "evidence"

    @property
    def db_url(self) -> str:
        """The effective database URL (the SQLite default lives in ``data_dir``)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"

    def require_secret_key(self) -> str:
        """Return the session key or raise :class:`ConfigError` saying how to set it."""
        if self.secret_key is None:
            raise ConfigError(
                "configuration field secret_key is required to serve the hub: set `secret_key` "
                "in the config file or LEUKONET_HUB_SECRET_KEY (e.g. the output of "
                f"`python -c 'import secrets; print(secrets.token_hex(32))'`, at least "
                f"{SECRET_KEY_MIN_CHARS} characters)"
            )
        return self.secret_key.get_secret_value()
