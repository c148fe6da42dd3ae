"""Publishing hub-owned retained messages (the desired model per agent) with a bounded wait."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid

import paho.mqtt.client as mqtt

from hub.config import MqttSection
from shared.logs import kv
from shared.mqtt import make_client, reason_ok

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker could not be reached, or did not acknowledge, within the timeout."""


class MqttPublisher:
    """A lazily connected paho client for QoS 1 publishes that wait for the broker's PUBACK.

    Connects on first use (never at construction), reconnects on later calls after a failure, and
    is safe to call from several request threads at once.
    """

    def __init__(self, section: MqttSection, client_id: str | None = None) -> None:
        self.section = section
        self.client_id = client_id or f"{section.client_id}-pub-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object
    ) -> None:
        if reason_ok(reason_code):
            self._connected.set()
        else:
            log.warning(kv("publisher_connect_refused", reason=reason_code))

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object
    ) -> None:
        self._connected.clear()

    def _ensure_connected(self, timeout: float) -> mqtt.Client:
        if self._client is None:
            client = make_client(self.section, self.client_id, persistent=False)
            client.on_connect = self._on_connect
            client.on_disconnect = self._on_disconnect
            try:
                client.connect(self.section.host, self.section.port, keepalive=self.section.keepalive)
            except OSError as exc:
                raise BrokerUnavailable(
                    f"cannot reach the MQTT broker at {self.section.host}:{self.section.port} ({exc})"
                ) from exc
            client.loop_start()
            self._client = client
        if not self._connected.wait(timeout):
            self._drop()
            raise BrokerUnavailable(
                f"the MQTT broker at {self.section.host}:{self.section.port} did not "
                f"accept a connection within {timeout:.0f} s"
            )
        return self._client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
            self._connected.clear()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool, qos: int = 1, timeout: float | None = None
    ) -> None:
        """Publish and wait until the broker acknowledged it.

        Raises:
            BrokerUnavailable: no connection or no acknowledgement within ``timeout`` seconds
                (default ``mqtt.publish_timeout_s``).
        """
        limit = timeout if timeout is not None else self.section.publish_timeout_s
        self.publish_many([(topic, payload)], retain=retain, qos=qos, timeout=limit)

    def publish_many(
        self, messages: list[tuple[str, bytes]], *, retain: bool, qos: int = 1, timeout: float | None = None
    ) -> None:
        """Publish every ``(topic, payload)`` and wait until the broker acknowledged all of them.

        The messages are pipelined (paho keeps its in-flight window full), so a stage of hundreds of
        desired states costs a few round trips, not one per agent. An empty payload with
        ``retain=True`` clears the retained message of that topic.

        Raises:
            BrokerUnavailable: no connection, or not every message acknowledged within ``timeout``
                (default ``mqtt.publish_timeout_s`` plus 10 ms per message). Some messages may
                have been delivered; callers publish idempotent retained states and retry.
        """
        if not messages:
            return
        limit = timeout if timeout is not None else self.section.publish_timeout_s + 0.01 * len(messages)
        deadline = time.monotonic() + limit
        with self._lock:
            client = self._ensure_connected(limit)
            infos = []
            for topic, payload in messages:
                info = client.publish(topic, payload, qos=qos, retain=retain)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self._drop()
                    raise BrokerUnavailable(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
                infos.append((topic, info))
            for topic, info in infos:
                try:
                    info.wait_for_publish(max(deadline - time.monotonic(), 0.1))
                except (RuntimeError, ValueError) as exc:
                    self._drop()
                    raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from exc
                if not info.is_published():
                    self._drop()
                    what = f"the publish to {topic}" if len(messages) == 1 else f"{len(messages)} publishes"
                    raise BrokerUnavailable(f"the broker did not acknowledge {what} within {limit:.0f} s")
        if len(messages) == 1:
            log.info(kv("published", topic=messages[0][0], retain=retain, bytes=len(messages[0][1])))
        else:
            log.info(kv("published_many", messages=len(messages), retain=retain))

    def check(self, timeout: float) -> None:
        """Connect (if needed) within ``timeout`` seconds; raises :class:`BrokerUnavailable`."""
        with self._lock:
            self._ensure_connected(timeout)

    def close(self) -> None:
        with self._lock:
            self._drop()
