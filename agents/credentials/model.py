"""What the agent's credentials are: the hub's answer, the file's format, and the snapshot the agent
uses (:class:`Credentials`), with the names of the files they live in."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from agents.models.download import show_origin, url_origin

FILE_NAME = "credentials.json"
#: a credentials file is a few hundred bytes; anything much larger is not one
MAX_BYTES = 16 * 1024
SCHEMA_VERSION = 1
ENROLL_HINT = (
    "re-enroll with `leukonet agent enroll --config <agent.yaml> --force` and a new enrollment token"
)
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: it goes into an HTTP header

Source = Literal["file", "config", "none"]


class CredentialsError(ValueError):
    """Credentials that cannot be used; the message names the file and what to do (never a secret)."""


class MqttLogin(BaseModel):
    """The agent's broker account."""

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    username: str = Field(min_length=1, max_length=256, title="broker user name")
    password: SecretStr = Field(min_length=1, max_length=1024, title="broker password")


class IssuedCredentials(BaseModel):
    """The hub's answer to ``POST /api/v1/enroll`` and ``POST /api/v1/agents/self/credentials``.

    Fields the hub may add later are ignored; input values never appear in validation errors.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, hide_input_in_errors=True)

    agent_id: str = Field(min_length=1, max_length=64, title="the agent id the hub issued them to")
    lab: str = Field("", max_length=128, title="the agent's lab as the hub knows it")
    mqtt: MqttLogin = Field(title="broker login")
    api_token: SecretStr = Field(min_length=1, max_length=1024, title="bearer token with the agent role")
    issued_at: datetime = Field(title="when the hub issued them")

    @field_validator("api_token")
    @classmethod
    def _header_safe(cls, v: SecretStr) -> SecretStr:
        if not _HEADER_SAFE.match(v.get_secret_value()):
            raise ValueError("the API token must be printable ASCII without spaces")
        return v

    @field_validator("issued_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return v if v.tzinfo is not None else v.replace(tzinfo=timezone.utc)


class StoredCredentials(IssuedCredentials):
    """``credentials.json``: the hub's answer, the origin of the hub that issued it, a schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    schema_version: Literal[1] = Field(1, title="file format version")
    hub: str = Field(min_length=1, max_length=300, title="origin of the hub that issued them")

    @classmethod
    def from_issued(cls, issued: IssuedCredentials, hub_url: str) -> StoredCredentials:
        """``issued`` as stored for the hub at ``hub_url`` (kept as its origin)."""
        return cls(**dict(issued), hub=show_origin(url_origin(hub_url)))

    def file_bytes(self) -> bytes:
        """The file's content: JSON with the secrets in clear (this is the only place they are)."""
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "agent_id": self.agent_id,
            "lab": self.lab,
            "hub": self.hub,
            "mqtt": {"username": self.mqtt.username, "password": self.mqtt.password.get_secret_value()},
            "api_token": self.api_token.get_secret_value(),
            "issued_at": self.issued_at.isoformat(),
        }
        return (json.dumps(data, indent=2) + "\n").encode()


@dataclass(frozen=True)
class Credentials:
    """What the agent authenticates with now, and where it came from (secrets kept out of ``repr``)."""

    source: Source
    mqtt_username: str | None = None
    mqtt_password: str | None = field(default=None, repr=False)
    api_token: str | None = field(default=None, repr=False)
    issued_at: datetime | None = None
    path: Path | None = None

    def describe(self) -> str:
        """One line for people: which source, and for the file whom and when it was issued to."""
        if self.source == "file":
            when = self.issued_at.isoformat() if self.issued_at else "?"
            return f"enrolled as MQTT user {self.mqtt_username}, issued {when} ({self.path})"
        if self.source == "config":
            parts = [
                name
                for name, v in (("hub.token", self.api_token), ("mqtt.username", self.mqtt_username))
                if v
            ]
            return f"config bootstrap ({', '.join(parts)} from the agent config; not enrolled)"
        return "none: not enrolled, and the config sets neither hub.token nor mqtt.username"


def credentials_path(state_dir: Path) -> Path:
    """Where an agent with ``state_dir`` keeps its credentials."""
    return Path(state_dir) / FILE_NAME


def next_path(path: Path) -> Path:
    """Where new credentials are staged before they replace ``path``."""
    return path.with_name(path.name + ".next")
