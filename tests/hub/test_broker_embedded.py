"""Embedded broker: the child mosquitto runs dynamic security (no anonymous access, the hub as its admin,
a password kept across restarts); amqtt only when asked for by name, and then it says it is insecure."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hub.broker import AmqttBroker, BrokerStartError, DynSecAccounts, MosquittoBroker, start_embedded_broker
from hub.broker import dynsec_config as dynsec_config_mod
from hub.broker import embedded as embedded_mod
from hub.broker.dynsec_config import DYNSEC_FILE, HUB_USERNAME, find_dynsec_plugin, write_dynsec_config
from hub.broker.embedded import find_mosquitto
from hub.config import BrokerSection
from tests.conftest import free_port
from tests.hub.mqtt_peers import Peer

Login = tuple[str, str] | None


def login_ok(port: int, username: str | None, password: str | None, client_id: str) -> bool:
    peer = Peer(port, username, password, client_id)
    peer.close()
    return peer.accepted


def roundtrip(
    port: int, sub_login: Login = None, pub_login: Login = None, pub_id: str | None = None
) -> bytes:
    got: list[bytes] = []
    subscribed, received = threading.Event(), threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"leukonet-hub-sub-{uuid.uuid4().hex[:6]}")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=pub_id or f"pub-{uuid.uuid4().hex[:6]}")
    for client, login in ((sub, sub_login), (pub, pub_login)):
        if login:
            client.username_pw_set(*login)
    sub.on_connect = lambda c, *_: c.subscribe("leukonet/v1/agents/+/results", qos=1)
    sub.on_subscribe = lambda *_: subscribed.set()

    def on_message(_c, _u, msg):
        got.append(msg.payload)
        received.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", port)
    sub.loop_start()
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


def test_embedded_mosquitto_carries_an_agents_messages_to_the_hub(tmp_path):
    section = BrokerSection(embedded=True, port=free_port(), implementation="mosquitto")
    broker = start_embedded_broker(section, tmp_path / "broker")
    try:
        assert isinstance(broker, MosquittoBroker) and broker.enforces_identity
        assert broker.hub_username == HUB_USERNAME and broker.hub_password
        accounts = DynSecAccounts(broker.settings)
        try:
            accounts.add_agent("a1", "a1-password-0123")
        finally:
            accounts.close()
        hub_login = (broker.hub_username, broker.hub_password)
        assert roundtrip(section.port, hub_login, ("a1", "a1-password-0123"), pub_id="a1") == b"hello"
        assert not login_ok(section.port, None, None, "anonymous"), "the embedded mosquitto let anyone in"
    finally:
        broker.stop()
    text = (tmp_path / "broker" / "mosquitto.conf").read_text()
    assert f"listener {section.port} 127.0.0.1\n" in text and text.count("listener") == 1
    assert "allow_anonymous false" in text and "max_queued_messages 100000" in text
    assert f"plugin {find_dynsec_plugin(find_mosquitto() or 'mosquitto')}\n" in text
    assert f"plugin_opt_config_file {(tmp_path / 'broker' / DYNSEC_FILE).resolve()}\n" in text


def test_the_hub_password_is_made_once_kept_private_and_reused(tmp_path):
    section = BrokerSection(embedded=True, port=free_port(), implementation="auto")
    state = tmp_path / "broker"
    first = start_embedded_broker(section, state)
    first.stop()
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "hub-password").stat().st_mode & 0o777 == 0o600
    assert (state / "hub-password").read_text().strip() == first.hub_password
    assert first.hub_password not in (state / DYNSEC_FILE).read_text()  # only its hash is there
    second = start_embedded_broker(section, state)
    try:
        assert second.hub_password == first.hub_password
        assert login_ok(section.port, HUB_USERNAME, second.hub_password, "leukonet-hub-check")
    finally:
        second.stop()


def test_a_lost_password_file_gets_a_new_password_that_works(tmp_path):
    section = BrokerSection(embedded=True, port=free_port())
    state = tmp_path / "broker"
    old = start_embedded_broker(section, state)
    old.stop()
    (state / "hub-password").unlink()
    new = start_embedded_broker(section, state)
    try:
        assert new.hub_password != old.hub_password
        assert login_ok(section.port, HUB_USERNAME, new.hub_password, "leukonet-hub-check")
    finally:
        new.stop()


def test_a_dynsec_config_written_without_mosquitto_ctrl_is_accepted_by_mosquitto(tmp_path):
    state = tmp_path / "broker"
    state.mkdir()
    (state / "hub-password").write_text("written-by-python-0123456789\n")
    write_dynsec_config(state / DYNSEC_FILE, HUB_USERNAME, "written-by-python-0123456789")
    assert json.loads((state / DYNSEC_FILE).read_text())["defaultACLAccess"]["subscribe"] is False
    exe = find_mosquitto()
    assert exe is not None
    # the start connects as that admin and gives it the hub role: it fails if Mosquitto refuses the hash
    broker = MosquittoBroker(exe, free_port(), state, 100_000)
    broker.stop()
    assert broker.hub_password == "written-by-python-0123456789"


def test_amqtt_runs_only_when_named_and_says_it_is_insecure(tmp_path, caplog):
    section = BrokerSection(embedded=True, port=free_port(), implementation="amqtt")
    with caplog.at_level(logging.WARNING, logger="hub.broker.embedded"):
        broker = start_embedded_broker(section, tmp_path / "broker")
    try:
        assert isinstance(broker, AmqttBroker)
        assert not broker.enforces_identity and broker.hub_username is None and broker.hub_password is None
        assert any("NOT enforced" in r.getMessage() for r in caplog.records)
        assert roundtrip(section.port) == b"hello"
    finally:
        broker.stop()


@pytest.mark.parametrize("implementation", ["auto", "mosquitto"])
def test_no_mosquitto_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch, implementation):
    monkeypatch.setattr(embedded_mod, "find_mosquitto", lambda: None)
    section = BrokerSection(embedded=True, port=free_port(), implementation=implementation)
    with pytest.raises(BrokerStartError, match=r"services\.sh demo.*apt-get install mosquitto.*amqtt"):
        start_embedded_broker(section, tmp_path / "broker")


def test_a_missing_plugin_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dynsec_config_mod, "_PLUGIN_DIRS", ())
    fake = tmp_path / "opt" / "bin" / "mosquitto"
    fake.parent.mkdir(parents=True)
    fake.write_text("")
    with pytest.raises(BrokerStartError, match="mosquitto_dynamic_security.so is not in"):
        find_dynsec_plugin(str(fake))


def test_port_in_use_is_a_clear_error(tmp_path):
    section = BrokerSection(embedded=True, port=free_port(), implementation="mosquitto")
    first = start_embedded_broker(section, tmp_path / "b1")
    try:
        with pytest.raises(BrokerStartError, match="already in use"):
            start_embedded_broker(section, tmp_path / "b2")
    finally:
        first.stop()
