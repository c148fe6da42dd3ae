"""Embedded broker: the child mosquitto and the in-process amqtt both carry a publish to a subscriber."""

from __future__ import annotations

import threading
import uuid

import paho.mqtt.client as mqtt
import pytest

from hub.broker import AmqttBroker, BrokerStartError, MosquittoBroker, start_embedded_broker
from hub.config import BrokerSection
from tests.conftest import free_port


def roundtrip(port: int) -> bytes:
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:6]}")
    sub.on_connect = lambda c, *_: c.subscribe("leukonet/v1/agents/+/results", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c, _u, msg):
        got.append(msg.payload)
        received.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    try:
        assert subscribed.wait(10)
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        info = pub.publish("leukonet/v1/agents/a1/results", b"hello", qos=1)
        info.wait_for_publish(10)
        assert received.wait(10), "subscriber got nothing"
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()
    return got[0]


@pytest.mark.parametrize("implementation", ["mosquitto", "amqtt"])
def test_embedded_broker_carries_messages(tmp_path, implementation):
    section = BrokerSection(embedded=True, port=free_port(), implementation=implementation)
    broker = start_embedded_broker(section, tmp_path / "broker")
    try:
        expected = MosquittoBroker if implementation == "mosquitto" else AmqttBroker
        assert isinstance(broker, expected)
        assert roundtrip(section.port) == b"hello"
    finally:
        broker.stop()
    if implementation == "mosquitto":
        text = (tmp_path / "broker" / "mosquitto.conf").read_text()
        assert f"listener {section.port} 127.0.0.1" in text and "max_queued_messages 100000" in text


def test_port_in_use_is_a_clear_error(tmp_path):
    section = BrokerSection(embedded=True, port=free_port(), implementation="mosquitto")
    first = start_embedded_broker(section, tmp_path / "b1")
    try:
        with pytest.raises(BrokerStartError, match="already in use"):
            start_embedded_broker(section, tmp_path / "b2")
    finally:
        first.stop()
