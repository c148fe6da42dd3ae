"""The agent against the real shared Mosquitto (127.0.0.1:1883), with unique agent ids."""

import threading
import uuid

import pytest

from agents.config import AgentConfig
from agents.daemon import build_agent
from shared.schemas import AgentState, AgentStatus, ClassificationResult
from shared.topics import Kind, build
from tests.agents.helpers import BLUE, RED, Recorder, make_bundle, make_keys, write_png

pytestmark = pytest.mark.integration


def test_agent_reports_results_and_status_on_the_shared_broker(tmp_path, shared_broker):
    agent_id = f"it-agent-{uuid.uuid4().hex[:10]}"
    keys = make_keys(tmp_path)
    bundle, _ = make_bundle(tmp_path, keys)
    cfg = AgentConfig.load(
        None,
        agent_id=agent_id,
        lab="integration",
        watch_dir=tmp_path / "in",
        state_dir=tmp_path / "state",
        backend="openvino",
        device="CPU",
        mqtt={"host": shared_broker.host, "port": shared_broker.port},
        model_public_key=keys.public,
        initial_model=bundle,
        status_interval_s=0.5,
        poll_interval_s=0.05,
        settle_s=0.05,
    )
    rec = Recorder(shared_broker.host, shared_broker.port, f"leukonet/v1/agents/{agent_id}/#")
    for i in range(4):
        write_png(cfg.watch_dir / f"img{i}.png", BLUE if i % 2 == 0 else RED, seed=i)
    agent = build_agent(cfg)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert rec.wait_for(lambda m: len(rec.payloads("/results")) >= 4, 30)
        results = [ClassificationResult.model_validate_json(p) for p in rec.payloads("/results")]
        assert {r.image_name: r.label for r in results} == {
            "img0.png": "ALL",
            "img1.png": "normal",
            "img2.png": "ALL",
            "img3.png": "normal",
        }
        assert {r.device for r in results} == {"CPU"}
        assert rec.wait_for(
            lambda m: any(
                t.endswith("/status") and retain is False and b'"1.0.0"' in p for t, p, retain in m
            ),
            10,
        )
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert rec.wait_for(lambda m: any(b'"offline"' in p for t, p, _ in m if t.endswith("/status")), 10)
    rec.stop()
    # the retained status a newcomer (the hub) sees is "offline"; clean it up afterwards
    late = Recorder(shared_broker.host, shared_broker.port, build(agent_id, Kind.STATUS))
    assert late.wait_for(lambda m: len(m) >= 1, 10)
    topic, payload, retained = late.messages[0]
    assert retained and AgentStatus.model_validate_json(payload).state is AgentState.OFFLINE
    late.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    late.stop()
