"""MQTT test peers for the broker tests: a paho client that records what the broker answered.

Shared by tests/hub/test_dynsec.py, tests/hub/test_broker_embedded.py,
tests/integration/test_broker_identity.py and tests/test_docker.py, which assert refused vs granted
logins, subscriptions and deliveries against a real Mosquitto.
"""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt

from tests.conftest import wait_until

PEER_WAIT_S = 5.0


class Peer:
    """A paho client recording its CONNACK, SUBACKs, messages and disconnects; every wait is bounded.

    Reconnects are slowed to 30 s so a kicked or refused peer stays down for the test's duration.
    """

    def __init__(self, port: int, username: str | None, password: str | None, client_id: str) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(30, 30)
        self.connack: Any = None
        self.dropped = threading.Event()
        self.messages: list[tuple[str, bytes, bool]] = []
        self._subacks: dict[int, Any] = {}
        self._answered = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.dropped.set()
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload), m.retain))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._answered.wait(PEER_WAIT_S), f"{client_id}: no CONNACK within {PEER_WAIT_S} s"

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connack is None:
            self.connack = reason
        self._answered.set()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _p: Any) -> None:
        self._subacks[mid] = reasons[0]

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, topic: str) -> bool:
        """True when the SUBACK grants ``topic`` (False: 0x80 failure)."""
        _rc, mid = self.client.subscribe(topic, qos=1)
        reason = wait_until(lambda: self._subacks.get(mid), PEER_WAIT_S, what=f"SUBACK for {topic}")
        return not reason.is_failure

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(PEER_WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def payloads(self, topic: str | None = None) -> list[bytes]:
        return [p for t, p, _r in list(self.messages) if topic is None or t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
