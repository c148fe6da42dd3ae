"""MQTT over TLS through the one client factory: a private Mosquitto with a TLS listener that
requires client certificates, reached by the hub's publisher and the agent's broker check."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from agents.cli import _check_broker
from agents.config import MqttConfig
from hub.config import MqttSection
from hub.mqtt.publisher import BrokerUnavailable, MqttPublisher
from shared.mqtt import MqttSettings
from tests.conftest import Broker, free_port


def _pem(path: Path, obj) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


def _cert(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool, san: list | None = None):
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leukonet test CA")])
    ca = _cert("leukonet test CA", ca_key, ca_name, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("localhost", server_key, ca_name, ca_key, ca=False, san=san)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("lab1-scope1", client_key, ca_name, ca_key, ca=False)
    return {
        "dir": d,
        "ca": _pem(d / "ca.pem", ca),
        "server_cert": _pem(d / "server.pem", server),
        "server_key": _pem(d / "server.key", server_key),
        "client_cert": _pem(d / "client.pem", client),
        "client_key": _pem(d / "client.key", client_key),
    }


@pytest.fixture
def tls_broker(tmp_path, pki):
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\n"
        f"cafile {pki['ca']}\ncertfile {pki['server_cert']}\nkeyfile {pki['server_key']}\n"
        "require_certificate true\n"
    )
    broker = Broker("127.0.0.1", port, config_path=conf)
    broker.start()
    yield broker
    broker.stop()


def test_hub_publisher_connects_with_a_client_certificate_and_is_refused_without(tls_broker, pki):
    base = {
        "host": "127.0.0.1",
        "port": tls_broker.port,
        "tls": True,
        "ca_file": pki["ca"],
        "publish_timeout_s": 5,
    }
    good = MqttPublisher(MqttSection(**base, cert_file=pki["client_cert"], key_file=pki["client_key"]))
    try:
        good.check(timeout=10)
        good.publish_many([("leukonet/v1/agents/a1/desired", b"{}")], retain=False)
    finally:
        good.close()
    no_cert = MqttPublisher(MqttSection(**base))
    try:
        with pytest.raises(BrokerUnavailable):
            no_cert.check(timeout=2)
    finally:
        no_cert.close()
    plain = MqttPublisher(MqttSection(host="127.0.0.1", port=tls_broker.port, publish_timeout_s=5))
    try:
        with pytest.raises(BrokerUnavailable):
            plain.check(timeout=2)
    finally:
        plain.close()


def test_agent_check_opens_a_tls_session(tls_broker, pki):
    cfg = MqttConfig(
        host="127.0.0.1",
        port=tls_broker.port,
        tls=True,
        ca_file=pki["ca"],
        cert_file=pki["client_cert"],
        key_file=pki["client_key"],
    )
    ok, detail = _check_broker(cfg, "tls-check")
    assert ok, detail
    ok, detail = _check_broker(
        MqttConfig(host="127.0.0.1", port=tls_broker.port, tls=True, ca_file=pki["ca"]), "x"
    )
    assert not ok, detail


def test_tls_settings_are_checked_together(pki):
    with pytest.raises(ValidationError, match="cert_file and key_file go together"):
        MqttSettings(tls=True, cert_file=pki["client_cert"])
    with pytest.raises(ValidationError, match="tls is false"):
        MqttSettings(ca_file=pki["ca"])
