"""paho-mqtt 2.x client construction shared by the ingest worker and the publisher."""

from __future__ import annotations

import paho.mqtt.client as mqtt

from hub.config import MqttSection


def make_client(section: MqttSection, client_id: str, *, persistent: bool) -> mqtt.Client:
    """A paho client (VERSION2 callbacks, MQTT 3.1.1) with credentials from ``section``.

    ``persistent=True`` asks the broker to keep the session (clean_session=False) under the
    stable ``client_id``, so QoS 1 messages queued while the hub was away are delivered later.
    """
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if section.username:
        password = section.password.get_secret_value() if section.password else None
        client.username_pw_set(section.username, password)
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


def reason_ok(reason_code: object) -> bool:
    """True when a paho ReasonCode (or int rc) means success."""
    failure = getattr(reason_code, "is_failure", None)
    if failure is not None:
        return not bool(failure)
    return reason_code == 0
