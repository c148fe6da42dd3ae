"""Identity end to end: ``leukonet hub serve`` with its embedded Mosquitto (dynamic security, no
anonymous access), agents enrolled through the REST API, and real MQTT clients using the
credentials enrollment gave them.

What is proven here, through the wiring the product ships (not the broker alone, which
tests/integration/test_broker_identity.py covers): an enrolled agent's result is stored; another
agent's forgery on its topic is not; no one connects anonymously or with the hub's client id; an
enrollment token works once; rotation replaces the broker password and API token without
re-enrolling; revocation disconnects the agent at once and it cannot come back.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from hub.config import HubConfig
from hub.server import serve
from shared import topics
from shared.topics import Kind
from tests.conftest import free_port, wait_until
from tests.hub.conftest import TOKENS, as_json, hub_config, make_result
from tests.hub.mqtt_peers import Peer

pytestmark = pytest.mark.integration
LAB1, LAB2 = "lab1-scope1", "lab2-scope1"
ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}


@dataclass
class Hub:
    config: HubConfig
    url: str
    broker_port: int

    def api(self, method: str, path: str, token: str | None = None, **kw: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else ADMIN
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=15, **kw)  # type: ignore[arg-type]

    def enroll(self, agent: str, **bound: str) -> dict:
        issued = self.api("POST", "/agents/enrollment-tokens", json=bound)
        assert issued.status_code == 201, issued.text
        r = requests.post(
            f"{self.url}/api/v1/enroll",
            json={"token": issued.json()["token"], "agent_id": agent, "lab": "Lab"},
            timeout=15,
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def stored(self, agent_id: str) -> set[str]:
        r = self.api("GET", "/classifications", params={"agent_id": agent_id})
        assert r.status_code == 200, r.text
        return {item["image_name"] for item in r.json()["items"]}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("identity-e2e")
    port, broker_port = free_port(), free_port()
    config = hub_config(
        tmp,
        None,
        host="127.0.0.1",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        broker={"embedded": True, "implementation": "mosquitto", "port": broker_port},
        mqtt={"host": "127.0.0.1", "port": broker_port, "client_id": "leukonet-hub-ingest"},
        ingest={"auto_register_agents": False},
    )
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            serve(config, stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture
            errors.append(exc)

    thread = threading.Thread(target=run, name="hub-serve", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert not errors, errors
        try:
            return requests.get(f"{url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, 60, 0.2, what="hub serve /healthz")
    try:
        yield Hub(config, url, broker_port)
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "hub serve did not stop within 30 s"


def peer(hub: Hub, creds: dict | None, client_id: str | None = None) -> Peer:
    user, password = (creds["mqtt"]["username"], creds["mqtt"]["password"]) if creds else (None, None)
    return Peer(hub.broker_port, user, password, client_id or (user or f"anon-{uuid.uuid4().hex[:6]}"))


def send_result(p: Peer, topic_agent: str) -> str:
    """Publish a result on ``topic_agent``'s topic whose payload claims ``topic_agent`` too (a
    forgery that only the sender's identity gives away); returns its image name."""
    result = make_result(agent_id=topic_agent)
    p.publish(topics.build(topic_agent, Kind.RESULTS), as_json(result))
    return result.image_name


def test_enrolled_agents_are_the_only_ones_heard(hub: Hub) -> None:
    lab1 = hub.enroll(LAB1, agent_id=LAB1)
    lab2 = hub.enroll(LAB2)
    a, b = peer(hub, lab1), peer(hub, lab2)
    try:
        assert a.accepted and b.accepted
        # lab2 forges a result on lab1's topic (payload claiming lab1), then lab1 sends a genuine one
        forged = send_result(b, LAB1)
        # sentinels: lab2's own result sent after the forgery on the same connection (so the hub
        # has seen whatever the broker let through first), and lab1's genuine one
        sentinel = send_result(b, LAB2)
        genuine = send_result(a, LAB1)
        wait_until(lambda: sentinel in hub.stored(LAB2), 20, 0.2, what="lab2's own result stored")
        wait_until(lambda: genuine in hub.stored(LAB1), 20, 0.2, what="lab1's genuine result stored")
        assert forged not in hub.stored(LAB1)
        # nobody gets in anonymously, and an agent cannot take the hub's ingest client id
        assert not peer(hub, None).accepted
        thief = peer(hub, lab2, client_id=hub.config.mqtt.client_id)
        assert not thief.accepted
        thief.close()
        still = send_result(a, LAB1)
        wait_until(lambda: still in hub.stored(LAB1), 20, 0.2, what="ingest still running after the attempt")
    finally:
        a.close()
        b.close()


def test_a_token_enrolls_once(hub: Hub) -> None:
    issued = hub.api("POST", "/agents/enrollment-tokens", json={"agent_id": "lab3-scope1"}).json()
    body = {"token": issued["token"], "agent_id": "lab3-scope1", "lab": ""}
    assert requests.post(f"{hub.url}/api/v1/enroll", json=body, timeout=15).status_code == 201
    again = requests.post(f"{hub.url}/api/v1/enroll", json=body, timeout=15)
    assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_enrollment_token"


def test_rotation_replaces_the_broker_password_and_token(hub: Hub) -> None:
    old = hub.enroll("lab4-scope1")
    r = hub.api("POST", "/agents/self/credentials", token=old["api_token"], json={})
    assert r.status_code == 200, r.text
    new = r.json()
    stale = peer(hub, old)
    assert not stale.accepted
    stale.close()
    fresh = peer(hub, new)
    try:
        assert fresh.accepted
        name = send_result(fresh, "lab4-scope1")
        wait_until(lambda: name in hub.stored("lab4-scope1"), 20, 0.2, what="result after rotation stored")
    finally:
        fresh.close()
    assert hub.api("GET", "/models", token=old["api_token"]).status_code == 401
    assert hub.api("GET", "/models", token=new["api_token"]).status_code == 200


def test_revocation_disconnects_at_once_and_for_good(hub: Hub) -> None:
    creds = hub.enroll("lab5-scope1")
    p = peer(hub, creds)
    try:
        assert p.accepted
        r = hub.api("POST", "/agents/lab5-scope1/revoke", json={})
        assert r.status_code == 200, r.text
        assert p.dropped.wait(10), "a revoked agent stayed connected"
    finally:
        p.close()
    back = peer(hub, creds)
    assert not back.accepted
    back.close()
    assert hub.api("GET", "/models", token=creds["api_token"]).status_code == 401


def test_the_embedded_broker_config_refuses_anonymous(hub: Hub) -> None:
    conf = (Path(hub.config.data_dir) / "broker" / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "dynamic_security" in conf
