"""One MQTT client factory for the hub and the agents (paho-mqtt 2.x, MQTT 3.1.1).

:class:`MqttSettings` is the connection part both roles' configs share: broker address,
credentials, TLS (CA bundle, optional client certificate) and reconnect back-off.
:func:`make_client` turns it into a paho client with VERSION2 callbacks, so credentials and TLS
are applied in one place for every connection either role opens. paho is imported on first use:
the trainer role does not install it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


class MqttSettings(BaseModel):
    """How to reach the broker; the roles' MQTT config sections extend it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1, title="broker host")
    port: int = Field(1883, ge=1, le=65535, title="broker port")
    username: str | None = Field(None, title="broker user name")
    password: SecretStr | None = Field(None, title="broker password")
    keepalive: int = Field(30, ge=5, le=3600, title="MQTT keepalive (s)")
    tls: bool = Field(False, title="use TLS to the broker")
    ca_file: Path | None = Field(None, title="CA bundle for TLS (system CAs when unset)")
    cert_file: Path | None = Field(None, title="client certificate (PEM) for brokers that require one")
    key_file: Path | None = Field(None, title="private key (PEM) of cert_file")
    reconnect_min_s: int = Field(1, ge=1, le=60, title="first reconnect delay (s)")
    reconnect_max_s: int = Field(30, ge=1, le=600, title="largest reconnect delay (s), exponential backoff")

    @model_validator(mode="after")
    def _tls_files(self) -> MqttSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "cert_file and key_file go together: set both for a client certificate, or neither"
            )
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file / cert_file are set but tls is false: set tls: true to use them")
        return self


def make_client(settings: MqttSettings, client_id: str, *, persistent: bool) -> mqtt.Client:
    """A paho client with ``settings``' credentials, TLS and reconnect back-off (not connected).

    ``persistent=True`` asks the broker to keep the session (clean_session=False) under the stable
    ``client_id``, so QoS 1 messages queued while the client was away are delivered later.
    """
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if settings.username:
        password = settings.password.get_secret_value() if settings.password else None
        client.username_pw_set(settings.username, password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
        )
    client.reconnect_delay_set(
        settings.reconnect_min_s, max(settings.reconnect_min_s, settings.reconnect_max_s)
    )
    return client


def reason_ok(reason_code: Any) -> bool:
    """True when a paho ReasonCode (or int rc) means success."""
    failure = getattr(reason_code, "is_failure", None)
    if failure is not None:
        return not bool(failure)
    return bool(reason_code == 0)
