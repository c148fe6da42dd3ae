"""The agent's metrics port: off by default (no port opened), loopback by default when on, and a
scrape parsed by the Prometheus client's own parser whose values follow what the agent did."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.config import AgentConfig
from agents.daemon import Agent, build_agent
from agents.metrics import LOOP
from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, wait_until, write_png


@pytest.fixture(scope="module")
def keys_and_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0]


def config(tmp_path: Path, keys: Any, bundle: Path | None, **overrides: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "agent_id": "metrics-1",
        "lab": "Lab M",
        "watch_dir": tmp_path / "in",
        "state_dir": tmp_path / "state",
        "backend": "fake",
        "model_public_key": keys.public,
        "initial_model": bundle,
        "poll_interval_s": 0.02,
        "settle_s": 0.05,
        "hub": {"url": "http://127.0.0.1:9", "token": "agent-token-0123456789"},
    }
    values.update(overrides)
    return AgentConfig.load(None, **values)


@pytest.fixture
def started() -> Iterator[list[Agent]]:
    """Agents a test started; closed at the end whatever happened."""
    agents: list[Agent] = []
    yield agents
    for agent in agents:
        agent.close()


def listening() -> set[tuple[str, int]]:
    """The TCP addresses this process listens on."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``{sample name: [(labels, value), ...]}`` of ``/metrics``, parsed by prometheus_client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        body = r.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, /, **labels: str) -> float:
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {samples.get(name)}"
    return found[0]


def test_metrics_are_off_by_default_and_no_port_opens(tmp_path, keys_and_bundle, started):
    keys, bundle = keys_and_bundle
    cfg = config(tmp_path, keys, bundle)
    assert (cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port) == (False, "127.0.0.1", 9108)
    before = listening()
    agent = build_agent(cfg, connect=False)
    started.append(agent)
    agent.start()
    assert agent.metrics is None
    assert listening() - before == set()
    assert LOOP not in agent.status().loops


def test_scrape_follows_classifications_on_a_loopback_port(tmp_path, keys_and_bundle, started):
    keys, bundle = keys_and_bundle
    cfg = config(tmp_path, keys, bundle, metrics={"enabled": True, "port": 0})
    agent = build_agent(cfg, connect=False)
    started.append(agent)
    agent.start()
    assert agent.metrics is not None and agent.metrics.port
    port = agent.metrics.port
    assert ("127.0.0.1", port) in listening()
    assert not any(p == port and ip != "127.0.0.1" for ip, p in listening()), "bound beyond loopback"

    first = scrape(port)
    assert value(first, "leukonet_agent_images_classified_total") == 0
    assert value(first, "leukonet_agent_inference_seconds_count") == 0
    assert value(first, "leukonet_agent_info", agent_id="metrics-1", lab="Lab M") == 1
    assert (
        value(first, "leukonet_agent_model_info", model="leukonet-tiny", version="1.0.0", device="fake") == 1
    )
    assert value(first, "leukonet_agent_mqtt_connected") == 0  # no link in this agent
    assert value(first, "leukonet_agent_loop_up", loop=LOOP) == 1
    assert value(first, "leukonet_agent_outbox_capacity_rows") == cfg.outbox.max_rows
    assert value(first, "leukonet_agent_evidence_queue_rows") == 0  # nothing classified yet
    assert value(first, "leukonet_agent_evidence_dropped_total") == 0
    assert value(first, "leukonet_agent_disk_free_bytes") > 0

    write_png(cfg.watch_dir / "a.png", BLUE)
    write_png(cfg.watch_dir / "b.png", BLUE, seed=1)
    write_png(cfg.watch_dir / "c.png", RED)
    (cfg.watch_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20 + b"IEND\xaeB`\x82")
    assert wait_until(lambda: len(list(cfg.done_path.glob("*.png"))) == 3)
    assert wait_until(lambda: len(list(cfg.failed_path.glob("*.reason.txt"))) == 1)

    after = scrape(port)
    assert value(after, "leukonet_agent_images_classified_total") == 3
    assert value(after, "leukonet_agent_images_failed_total", reason="bad_image") == 1
    assert value(after, "leukonet_agent_images_failed_total", reason="no_model") == 0
    assert value(after, "leukonet_agent_inference_seconds_count") == 3
    assert value(after, "leukonet_agent_inference_seconds_bucket", le="+Inf") == 3
    assert value(after, "leukonet_agent_outbox_depth") == 3  # no MQTT: every result waits

    agent.close()
    started.remove(agent)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert agent.metrics.port is None


def test_a_taken_port_is_reported_and_the_agent_runs_on(tmp_path, keys_and_bundle, started):
    keys, bundle = keys_and_bundle
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = config(tmp_path, keys, bundle, metrics={"enabled": True, "port": port})
        agent = build_agent(cfg, connect=False)
        started.append(agent)
        agent.start()
        assert agent.metrics is not None and agent.metrics.port is None
        assert agent.status().loops[LOOP].alive is False
        write_png(cfg.watch_dir / "a.png", BLUE)
        assert wait_until(lambda: (cfg.done_path / "a.png").exists())


def test_connected_follows_the_mqtt_link(tmp_path, keys_and_bundle, private_broker, started):
    keys, bundle = keys_and_bundle
    cfg = config(
        tmp_path,
        keys,
        bundle,
        metrics={"enabled": True, "port": 0},
        mqtt={"host": private_broker.host, "port": private_broker.port, "reconnect_max_s": 1},
    )
    agent = build_agent(cfg)
    started.append(agent)
    agent.start()
    assert agent.metrics is not None and agent.metrics.port is not None
    port = agent.metrics.port
    assert wait_until(lambda: value(scrape(port), "leukonet_agent_mqtt_connected") == 1)
    private_broker.stop()
    assert wait_until(lambda: value(scrape(port), "leukonet_agent_mqtt_connected") == 0)
