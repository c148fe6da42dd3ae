"""The hub's tables as typed SQLAlchemy 2 models.

Timestamps are UTC-aware (:class:`~hub.db.types.UTCDateTime`). Classification and model events are
keyed by the UUID the agent generated (``result_id`` / ``event_id``), unique, so a redelivered
QoS 1 message is stored once. Change a model here together with a new Alembic revision in
``hub/migrations/versions`` (a test compares both).

The result tables (``classifications``, ``result_cells``) live in :mod:`hub.db.results` and are
re-exported here, as is the declarative :class:`~hub.db.base.Base`: import them from either.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text, UniqueConstraint, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base as Base
from hub.db.results import Classification as Classification
from hub.db.results import ResultCell as ResultCell
from hub.db.review_models import ReviewAction as ReviewAction
from hub.db.review_models import ReviewStatus as ReviewStatus
from hub.db.types import UTCDateTime
from hub.evidence.model import EvidenceImage as EvidenceImage
from shared.clock import utcnow


class Agent(Base):
    """An edge agent: what it reports (state, model, vitals) and what the hub wants it to run."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), unique=True)
    lab: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    model_name: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64))
    precision: Mapped[str | None] = mapped_column(String(8))
    execution_precision: Mapped[str | None] = mapped_column(String(64))
    vitals: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    desired_model_name: Mapped[str | None] = mapped_column(String(128))
    desired_model_version: Mapped[str | None] = mapped_column(String(64))
    desired_set_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: when the agent redeemed an enrollment token (None: registered by hand, or never enrolled)
    enrolled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: when an admin revoked it: its broker login and API tokens are gone and ingest refuses it
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    credentials_rotated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ModelVersion(Base):
    """A verified bundle in the registry; the zip itself lives in the bundle store under ``sha256``."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_path: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(Integer)
    uploaded_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelEventRecord(Base):
    """A model-update step an agent reported (downloading, activated, failed, ...)."""

    __tablename__ = "model_events"
    __table_args__ = (Index("ix_model_events_agent_sent", "agent_id", "sent_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid(), unique=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AgentTag(Base):
    """A free-form tag on one agent (rollouts can target a tag)."""

    __tablename__ = "agent_tags"
    __table_args__ = (UniqueConstraint("agent_id", "tag", name="uq_agent_tags_agent_tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), index=True)
    tag: Mapped[str] = mapped_column(String(64), index=True)


class LabTag(Base):
    """A tag on a lab: every agent reporting that lab carries it for rollout targeting."""

    __tablename__ = "lab_tags"
    __table_args__ = (UniqueConstraint("lab", "tag", name="uq_lab_tags_lab_tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lab: Mapped[str] = mapped_column(String(128), index=True)
    tag: Mapped[str] = mapped_column(String(64), index=True)


class Rollout(Base):
    """A staged rollout of one model version to a set of agents (see :mod:`hub.rollouts`)."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(64), unique=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    stages: Mapped[list[int]] = mapped_column(JSON)
    current_stage: Mapped[int] = mapped_column(Integer, default=0)
    success_threshold: Mapped[float] = mapped_column(Float)
    error_threshold: Mapped[float] = mapped_column(Float)
    on_failure: Mapped[str] = mapped_column(String(16))
    timeout_s: Mapped[int] = mapped_column(Integer)
    acknowledged_failures: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class RolloutTarget(Base):
    """One agent in a rollout: its stage, state, and the model it ran before (for rollback)."""

    __tablename__ = "rollout_targets"
    __table_args__ = (
        UniqueConstraint("rollout_id", "agent_id", name="uq_rollout_targets_rollout_agent"),
        Index("ix_rollout_targets_agent_state", "agent_id", "state"),
        Index("ix_rollout_targets_rollout_stage", "rollout_id", "stage"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str] = mapped_column(String(64))
    stage: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    previous_model_name: Mapped[str | None] = mapped_column(String(128))
    previous_model_version: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    failure: Mapped[str] = mapped_column(Text, default="")  # last failure reason, kept after a rollback
    desired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RolloutHistory(Base):
    """A state change of a rollout (``agent_id`` NULL) or of one of its targets."""

    __tablename__ = "rollout_history"
    __table_args__ = (
        Index("ix_rollout_history_rollout", "rollout_id", "id"),
        Index("ix_rollout_history_agent", "agent_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEntry(Base):
    """Who did what: a person's, service's or agent's action, or an automatic decision (see
    :mod:`hub.audit` for what ``actor`` holds)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class TrainingJob(Base):
    """A training run an operator queued for ``leukonet trainer serve`` (see :mod:`hub.training`).

    ``spec`` is the :class:`shared.training.TrainingJobSpec` as JSON; ``model_name`` and
    ``model_version`` repeat its name and version so that at most one queued or running job can
    produce a given model version (a partial unique index, on SQLite and PostgreSQL alike).
    """

    __tablename__ = "training_jobs"
    __table_args__ = (
        Index("ix_training_jobs_state", "state", "id"),
        Index("ix_training_jobs_worker_state", "worker", "state"),
        Index(
            "uq_training_jobs_active_model",
            "model_name",
            "model_version",
            unique=True,
            sqlite_where=text("state IN ('queued', 'running')"),
            postgresql_where=text("state IN ('queued', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(String(36), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    worker: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class User(Base):
    """A person: a unique user name, one role, an argon2 password hash (never the password).

    ``failed_logins`` counts wrong passwords since the last success; at the configured limit the
    account is locked until ``locked_until``. A disabled user cannot log in and loses every session
    and API token at once.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebSession(Base):
    """A dashboard login. The cookie carries a random id; the hub stores only its SHA-256, so a
    session ends for good when its row is deleted (logout, password change, user disabled)."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_user", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(Integer)
    remote: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LoginFailure(Base):
    """One failed dashboard login, kept for the per-address throttle window."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    username: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiTokenRecord(Base):
    """A bearer token created in the dashboard, the CLI or by enrollment, scoped to one role.

    The token reads ``lkn_<token_id>_<secret>``: ``token_id`` finds the row, and only the SHA-256
    of the whole token is stored (tokens are 256-bit random, so a fast hash is enough; passwords
    use argon2). ``user_id`` is the person it acts for, ``agent_id`` the agent it belongs to.
    """

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_agent", "agent_id"), Index("ix_api_tokens_user", "user_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[int | None] = mapped_column(Integer)
    agent_id: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class EnrollmentToken(Base):
    """A single-use token an admin hands to one agent install; only its SHA-256 is stored.

    Optionally bound to an ``agent_id`` and a ``lab``: the agent redeeming it must claim them.
    """

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str | None] = mapped_column(String(64))
    lab: Mapped[str | None] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    used_by: Mapped[str | None] = mapped_column(String(64))
