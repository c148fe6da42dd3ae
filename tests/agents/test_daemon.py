import json
import subprocess
import sys
import threading
import uuid

import pytest

from agents.config import AgentConfig
from agents.daemon import build_agent
from agents.outbox import Outbox
from shared.schemas import AgentStatus, ClassificationResult, DesiredModel, ModelEvent, Timings
from shared.topics import Kind, build
from tests.agents.helpers import (
    BLUE,
    RED,
    Recorder,
    bundle_server,
    make_bundle,
    make_keys,
    wait_until,
    write_png,
)

TOKEN = "agent-token"


@pytest.fixture(scope="module")
def keys_and_bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0"), make_bundle(folder, keys, "2.0.0", flip=True)


def config(tmp_path, broker, keys, agent_id, **overrides):
    values = {
        "agent_id": agent_id,
        "lab": "haematology",
        "watch_dir": tmp_path / "in",
        "state_dir": tmp_path / "state",
        "backend": "fake",
        "device": "CPU",
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_max_s": 1},
        "hub": {"url": "http://127.0.0.1:9", "token": TOKEN},
        "model_public_key": keys.public,
        "status_interval_s": 0.3,
        "poll_interval_s": 0.02,
        "settle_s": 0.05,
    }
    values.update(overrides)
    return AgentConfig.load(None, **values)


class Running:
    """An agent running in a thread; ``stop()`` waits for it to finish."""

    def __init__(self, cfg):
        self.agent = build_agent(cfg)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def results(rec: Recorder) -> list[ClassificationResult]:
    return [ClassificationResult.model_validate_json(p) for p in rec.payloads("/results")]


def events(rec: Recorder) -> list[ModelEvent]:
    return [ModelEvent.model_validate_json(p) for p in rec.payloads("/events")]


def statuses(rec: Recorder) -> list[AgentStatus]:
    return [AgentStatus.model_validate_json(p) for p in rec.payloads("/status")]


def test_pipeline_publishes_results_and_moves_bad_files_to_failed(tmp_path, private_broker, keys_and_bundles):
    keys, (v1, _), _ = keys_and_bundles
    cfg = config(tmp_path, private_broker, keys, "pipe-1", initial_model=v1, low_confidence_threshold=0.99)
    rec = Recorder(private_broker.host, private_broker.port, "leukonet/v1/agents/pipe-1/#")
    write_png(cfg.watch_dir / "blue.png", BLUE)
    write_png(cfg.watch_dir / "red.png", RED)
    write_png(cfg.watch_dir / "grey.png", (128, 128, 128))
    (cfg.watch_dir / "corrupt.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20 + b"IEND\xaeB`\x82"
    )
    full = write_png(tmp_path / "full.png", BLUE).read_bytes()
    (cfg.watch_dir / "truncated.png").write_bytes(full[: len(full) // 2])
    (cfg.watch_dir / "empty.jpg").write_bytes(b"")
    running = Running(cfg)
    try:
        assert rec.wait_for(lambda m: len([x for x in m if x[0].endswith("/results")]) >= 3)
        by_name = {r.image_name: r for r in results(rec)}
        assert by_name["blue.png"].label == "ALL" and by_name["red.png"].label == "normal"
        grey = by_name["grey.png"]
        assert grey.low_confidence and grey.confidence < 0.99
        for r in by_name.values():
            assert (r.agent_id, r.lab, r.model_name, r.model_version, r.device) == (
                "pipe-1",
                "haematology",
                "leukonet-tiny",
                "1.0.0",
                "fake",
            )
            assert r.timings.total_ms >= r.timings.inference_ms >= 0
        assert wait_until(lambda: len(list(cfg.failed_path.glob("*.reason.txt"))) == 3)
        reasons = {p.name: p.read_text() for p in cfg.failed_path.glob("*.reason.txt")}
        assert "not a decodable image" in reasons["corrupt.png.reason.txt"]
        assert "truncated" in reasons["truncated.png.reason.txt"]
        assert "empty" in reasons["empty.jpg.reason.txt"]
        # results are published as soon as they are committed; the moves to done/ follow
        assert wait_until(
            lambda: sorted(p.name for p in cfg.done_path.iterdir()) == ["blue.png", "grey.png", "red.png"]
        )
        assert wait_until(
            lambda: any(
                s.model_version == "1.0.0"
                and s.vitals.outbox_depth == 0
                and s.vitals.p50_inference_ms is not None
                for s in statuses(rec)
            )
        )
    finally:
        running.stop()
    assert rec.wait_for(lambda m: any(t.endswith("/status") and b'"offline"' in p for t, p, _ in m))
    rec.stop()
    assert Outbox(cfg.state_path / "outbox.sqlite3").depth() == 0


def test_results_survive_broker_outage_and_agent_restart(tmp_path, private_broker, keys_and_bundles):
    keys, (v1, _), _ = keys_and_bundles
    agent_id = f"outage-{uuid.uuid4().hex[:8]}"
    cfg = config(tmp_path, private_broker, keys, agent_id, initial_model=v1)
    rec = Recorder(
        private_broker.host,
        private_broker.port,
        build(agent_id, Kind.RESULTS),
        client_id=f"rec-{agent_id}",
        clean_session=False,
    )
    names = set()

    def drop(prefix, n):
        for i in range(n):
            names.add(write_png(cfg.watch_dir / f"{prefix}{i}.png", BLUE if i % 2 else RED, seed=i).name)

    running = Running(cfg)
    try:
        drop("a", 4)
        assert rec.wait_for(lambda m: len(m) >= 4)
        # A: the broker goes away mid-stream and comes back; the same agent catches up.
        private_broker.stop()
        drop("b", 4)
        assert wait_until(lambda: len(list(cfg.done_path.glob("b*.png"))) == 4)
        assert running.agent.outbox.depth() == 4
        private_broker.start()
        assert rec.wait_for(lambda m: {r.image_name for r in results(rec)} >= set(names), 30)
        # B: the broker goes away again and the agent is restarted before it comes back.
        private_broker.stop()
        drop("c", 3)
        assert wait_until(lambda: len(list(cfg.done_path.glob("c*.png"))) == 3)
    finally:
        running.stop()
    box = Outbox(cfg.state_path / "outbox.sqlite3")
    assert box.depth() == 3
    box.close()
    private_broker.start()
    running = Running(cfg)
    try:
        assert rec.wait_for(lambda m: {r.image_name for r in results(rec)} >= names, 30)
        assert wait_until(lambda: running.agent.outbox.depth() == 0)
    finally:
        running.stop()
        rec.stop()
    assert len({r.result_id for r in results(rec)}) >= len(names) == 11


def test_desired_model_on_mqtt_is_installed_and_used(tmp_path, private_broker, keys_and_bundles):
    keys, (v1, sha1), (v2, sha2) = keys_and_bundles
    agent_id = "desired-1"
    files = {
        "/api/v1/models/leukonet-tiny/1.0.0/bundle": v1.read_bytes(),
        "/api/v1/models/leukonet-tiny/2.0.0/bundle": v2.read_bytes(),
    }
    with bundle_server(files, TOKEN) as (url, seen):
        cfg = config(
            tmp_path, private_broker, keys, agent_id, backend="openvino", hub={"url": url, "token": TOKEN}
        )
        rec = Recorder(private_broker.host, private_broker.port, f"leukonet/v1/agents/{agent_id}/#")
        write_png(cfg.watch_dir / "waiting.png", BLUE)
        running = Running(cfg)
        try:
            # No model: the image waits in the folder and the status says so.
            assert rec.wait_for(lambda m: len(statuses(rec)) >= 2)
            assert all(s.model_version is None for s in statuses(rec))
            assert (cfg.watch_dir / "waiting.png").exists() and not cfg.failed_path.joinpath(
                "waiting.png"
            ).exists()

            def desire(version, sha):
                d = DesiredModel(
                    agent_id=agent_id,
                    model_name="leukonet-tiny",
                    model_version=version,
                    bundle_url=f"{url}/api/v1/models/leukonet-tiny/{version}/bundle",
                    bundle_sha256=sha,
                )
                rec.client.publish(build(agent_id, Kind.DESIRED), d.to_json(), qos=1, retain=True)

            desire("1.0.0", sha1)
            assert rec.wait_for(lambda m: any(r.image_name == "waiting.png" for r in results(rec)))
            first = next(r for r in results(rec) if r.image_name == "waiting.png")
            assert (first.model_version, first.label, first.device) == ("1.0.0", "ALL", "CPU")

            desire("2.0.0", sha2)
            assert rec.wait_for(
                lambda m: any(
                    e.event.value == "activated" and e.model_version == "2.0.0" for e in events(rec)
                )
            )
            assert [e.event.value for e in events(rec) if e.model_version == "2.0.0"] == [
                "downloading",
                "verifying",
                "activated",
            ]
            assert rec.wait_for(lambda m: any(s.model_version == "2.0.0" for s in statuses(rec)))
            write_png(cfg.watch_dir / "after.png", BLUE)
            assert rec.wait_for(lambda m: any(r.image_name == "after.png" for r in results(rec)))
            after = next(r for r in results(rec) if r.image_name == "after.png")
            assert (after.model_version, after.label) == ("2.0.0", "normal")
            assert seen == list(files)
        finally:
            running.stop()
            rec.client.publish(build(agent_id, Kind.DESIRED), b"", qos=1, retain=True).wait_for_publish(5)
            rec.stop()
    state = json.loads((cfg.state_path / "active.json").read_text())
    assert (state["current"]["version"], state["previous"]["version"]) == ("2.0.0", "1.0.0")


def test_a_result_committed_before_a_crash_is_not_classified_again(
    tmp_path, private_broker, keys_and_bundles
):
    keys, (v1, _), _ = keys_and_bundles
    cfg = config(tmp_path, private_broker, keys, "crash-1", initial_model=v1)
    img = write_png(cfg.watch_dir / "x.png", BLUE)
    import hashlib

    box = Outbox(cfg.state_path / "outbox.sqlite3")
    box.put(
        ClassificationResult(
            agent_id="crash-1",
            image_name="x.png",
            image_sha256=hashlib.sha256(img.read_bytes()).hexdigest(),
            label="ALL",
            confidence=0.9,
            probabilities={"ALL": 0.9, "normal": 0.1},
            model_name="leukonet-tiny",
            model_version="1.0.0",
            timings=Timings(decode_ms=0, preprocess_ms=0, inference_ms=0, total_ms=0),
        ),
        source=img,
    )
    box.close()
    agent = build_agent(cfg, connect=False)
    agent.start()
    try:
        assert (cfg.done_path / "x.png").exists() and not img.exists()
        assert agent.outbox.depth() == 1 and agent.outbox.pending_moves() == []
    finally:
        agent.close()


def test_importing_the_agent_does_not_load_tensorflow_flask_or_sqlalchemy():
    code = (
        "import sys, agents.daemon, agents.cli; "
        "bad = [m for m in ('tensorflow', 'flask', 'sqlalchemy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
