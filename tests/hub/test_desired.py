"""Desired state: stored in the database and published retained on the agent's desired topic."""

from __future__ import annotations

import json
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select

from hub.app import close_app
from hub.db.models import Agent
from shared import topics
from shared.schemas import DesiredModel, parse_payload
from tests.hub.conftest import auth, broker_config, migrated_app


@pytest.fixture
def broker_app(tmp_path, keys, private_broker):
    app = migrated_app(broker_config(tmp_path, keys, private_broker.port))
    yield app, private_broker
    close_app(app)


def read_retained(port: int, topic: str, timeout: float = 10.0) -> mqtt.MQTTMessage:
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"reader-{uuid.uuid4().hex[:8]}")
    c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)

    def on_message(_c, _u, msg):
        got.append(msg)
        done.set()

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(timeout), f"no retained message on {topic}"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_put_desired_publishes_retained_message(broker_app, make_bundle):
    app, broker = broker_app
    client = app.test_client()
    with make_bundle(version="2.0.0").open("rb") as fh:
        up = client.post(
            "/api/v1/models",
            data={"bundle": (fh, "b.zip")},
            headers=auth("trainer"),
            content_type="multipart/form-data",
        )
    assert up.status_code == 201
    agent_id = f"never-connected-{uuid.uuid4().hex[:6]}"
    r = client.put(
        f"/api/v1/agents/{agent_id}/desired",
        json={"model_name": "leuko", "model_version": "2.0.0"},
        headers=auth("admin"),
    )
    assert r.status_code == 200, r.json
    assert r.json["bundle_url"] == "http://hub.test:8080/api/v1/models/leuko/2.0.0/bundle"
    assert r.json["bundle_sha256"] == up.json["sha256"]

    msg = read_retained(broker.port, topics.build(agent_id, topics.Kind.DESIRED))
    assert msg.retain
    desired = parse_payload(topics.Kind.DESIRED, msg.payload)
    assert isinstance(desired, DesiredModel)
    assert (desired.agent_id, desired.model_name, desired.model_version) == (agent_id, "leuko", "2.0.0")
    assert desired.bundle_sha256 == up.json["sha256"]

    shown = client.get(f"/api/v1/agents/{agent_id}", headers=auth("admin")).json
    assert (shown["desired_model_name"], shown["desired_model_version"]) == ("leuko", "2.0.0")


def test_broker_down_is_503_and_changes_nothing(broker_app, make_bundle):
    app, broker = broker_app
    client = app.test_client()
    with make_bundle().open("rb") as fh:
        assert (
            client.post(
                "/api/v1/models",
                data={"bundle": (fh, "b.zip")},
                headers=auth("admin"),
                content_type="multipart/form-data",
            ).status_code
            == 201
        )
    broker.stop()
    r = client.put(
        "/api/v1/agents/a1/desired",
        json={"model_name": "leuko", "model_version": "1.0.0"},
        headers=auth("admin"),
    )
    assert r.status_code == 503
    assert r.json["error"]["code"] == "broker_unavailable"
    from hub.extensions import hub_ext

    with hub_ext.for_app(app).db.session() as s:
        assert s.scalar(select(Agent).where(Agent.agent_id == "a1")) is None
    broker.start()
    r = client.put(
        "/api/v1/agents/a1/desired",
        json={"model_name": "leuko", "model_version": "1.0.0"},
        headers=auth("admin"),
    )
    assert r.status_code == 200, r.json


def test_an_operator_desiring_a_lower_version_than_the_agent_runs_marks_a_rollback(env):
    on_two = env.agents(1, version="2.0.0", prefix="two")[0]
    on_one = env.agents(1, version="1.0.0", prefix="one")[0]

    def put(agent_id: str, version: str) -> tuple[dict, bytes]:
        r = env.client.put(
            f"/api/v1/agents/{agent_id}/desired",
            json={"model_name": "leuko", "model_version": version},
            headers=auth("admin"),
        )
        assert r.status_code == 200, r.json
        return r.json, read_retained(env.port, topics.build(agent_id, topics.Kind.DESIRED)).payload

    body, payload = put(on_two, "1.0.0")  # it reports 2.0.0: the agent may go back only when told
    assert body["rollback"] is True and json.loads(payload)["rollback"] is True
    # upgrades, the running version, and agents that never reported: no rollback, and the field is
    # left out so agents that predate it still read the message
    for agent_id, version in ((on_one, "2.0.0"), (on_two, "2.0.0"), ("never-seen-1", "1.0.0")):
        body, payload = put(agent_id, version)
        assert body["rollback"] is False and b"rollback" not in payload, (agent_id, version)
