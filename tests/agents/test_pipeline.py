"""The pipeline inside a running agent (no broker): swaps under load, partial files, outbox limits."""

import hashlib
import logging
import threading
import time

import pytest

from agents.config import AgentConfig
from agents.daemon import build_agent
from agents.outbox import OutboxError
from shared.schemas import ClassificationResult
from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, wait_until, write_png


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundles")
    keys = make_keys(folder)
    return keys, make_bundle(folder, keys, "1.0.0")[0], make_bundle(folder, keys, "2.0.0", flip=True)[0]


def config(tmp_path, keys, **overrides):
    values = {
        "agent_id": "pipe",
        "watch_dir": tmp_path / "in",
        "state_dir": tmp_path / "state",
        "backend": "openvino",
        "device": "CPU",
        "model_public_key": keys.public,
        "poll_interval_s": 0.02,
        "settle_s": 0.05,
    }
    values.update(overrides)
    return AgentConfig.load(None, **values)


class Offline:
    """An agent without MQTT running in a thread: results stay in its outbox."""

    def __init__(self, cfg):
        self.agent = build_agent(cfg, connect=False)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,), daemon=True)
        self.thread.start()

    def rows(self) -> list[ClassificationResult]:
        return [
            ClassificationResult.model_validate_json(r.payload) for r in self.agent.outbox.after(0, 10_000)
        ]

    def stop(self):
        self.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_a_model_swap_under_load_loses_and_mixes_nothing(tmp_path, bundles):
    keys, v1, v2 = bundles
    cfg = config(tmp_path, keys, initial_model=v1, settle_s=0, pipeline={"decode_threads": 2})
    running = Offline(cfg)
    n = 240
    try:
        assert wait_until(lambda: running.agent.models.active is not None, 30)

        def drop():
            for i in range(n):
                write_png(cfg.watch_dir / f".tmp{i}.png", BLUE, seed=i).rename(
                    cfg.watch_dir / f"img{i:03d}.png"
                )
                if i % 20 == 0:
                    time.sleep(0.01)

        writer = threading.Thread(target=drop)
        writer.start()
        assert wait_until(lambda: running.agent.outbox.depth() >= 40, 30)
        running.agent.models.install_bundle(v2)  # swap while images are in every stage
        writer.join(30)
        assert wait_until(lambda: running.agent.outbox.depth() >= n, 60)
        rows = running.rows()
    finally:
        running.stop()
    assert len(rows) == n
    assert sorted(r.image_name for r in rows) == [f"img{i:03d}.png" for i in range(n)]
    by_version = {v: [r for r in rows if r.model_version == v] for v in ("1.0.0", "2.0.0")}
    assert by_version["1.0.0"] and by_version["2.0.0"], "the swap happened before or after the whole stream"
    # v2 flips the labels: every image was classified by exactly the model it reports.
    assert {r.label for r in by_version["1.0.0"]} == {"ALL"}
    assert {r.label for r in by_version["2.0.0"]} == {"normal"}
    assert list(cfg.failed_path.iterdir()) == []
    assert sorted(p.name for p in cfg.done_path.iterdir()) == [f"img{i:03d}.png" for i in range(n)]


def test_a_file_still_being_written_is_read_only_once_complete(tmp_path, bundles):
    keys, v1, _ = bundles
    cfg = config(tmp_path, keys, initial_model=v1, settle_s=0.4)
    full = write_png(tmp_path / "full.png", RED, seed=3).read_bytes()
    running = Offline(cfg)
    try:
        assert wait_until(lambda: running.agent.models.active is not None, 30)
        target = cfg.watch_dir / "slow.png"
        with target.open("wb") as fh:
            for i in range(0, len(full), max(len(full) // 6, 1)):
                fh.write(full[i : i + max(len(full) // 6, 1)])
                fh.flush()
                time.sleep(0.1)
        assert wait_until(lambda: running.agent.outbox.depth() == 1, 20)
        (row,) = running.rows()
    finally:
        running.stop()
    assert row.image_sha256 == hashlib.sha256(full).hexdigest() and row.label == "normal"
    assert list(cfg.failed_path.iterdir()) == []


def test_the_outbox_cap_pauses_intake_loudly_and_loses_nothing(tmp_path, bundles, caplog):
    keys, v1, _ = bundles
    cfg = config(tmp_path, keys, initial_model=v1, outbox={"max_rows": 3, "alarm_interval_s": 0.2})
    for i in range(7):
        write_png(cfg.watch_dir / f"f{i}.png", BLUE, seed=i)
    running = Offline(cfg)
    try:
        with caplog.at_level(logging.ERROR, logger="agents.pipeline"):
            assert wait_until(lambda: "outbox full" in caplog.text, 20)
        assert running.agent.outbox.depth() == 3
        assert wait_until(lambda: len(list(cfg.done_path.iterdir())) == 3)
        assert len(list(cfg.watch_dir.glob("f*.png"))) == 4
        assert running.agent.status().vitals.outbox_depth == 3
        # the broker acknowledges: intake resumes where it stopped
        box = running.agent.outbox
        box.ack_many([r.seq for r in box.after(0, 100)])
        assert wait_until(lambda: len(list(cfg.done_path.iterdir())) == 6, 20)
        box.ack_many([r.seq for r in box.after(0, 100)])
        assert wait_until(lambda: len(list(cfg.done_path.iterdir())) == 7, 20)
    finally:
        running.stop()
    assert "intake_resumed" in caplog.text


def test_low_disk_pauses_intake(tmp_path, bundles, caplog):
    keys, v1, _ = bundles
    cfg = config(tmp_path, keys, initial_model=v1, outbox={"min_free_disk_mb": 1e12})
    write_png(cfg.watch_dir / "a.png", BLUE)
    running = Offline(cfg)
    try:
        with caplog.at_level(logging.ERROR, logger="agents.pipeline"):
            assert wait_until(lambda: "disk almost full" in caplog.text, 20)
        assert (cfg.watch_dir / "a.png").exists() and running.agent.outbox.depth() == 0
    finally:
        running.stop()


def test_a_refused_outbox_write_keeps_the_images_for_later(tmp_path, bundles, monkeypatch):
    keys, v1, _ = bundles
    cfg = config(tmp_path, keys, initial_model=v1)
    running = Offline(cfg)
    box = running.agent.outbox
    real = box.put_many
    failures = []

    def flaky(items, evidence=None):
        if not failures:
            failures.append(len(items))
            raise OutboxError("database or disk is full")
        return real(items, evidence=evidence)

    monkeypatch.setattr(box, "put_many", flaky)
    running.agent.pipeline.error_backoff_s = 0.2
    try:
        assert wait_until(lambda: running.agent.models.active is not None, 30)
        for i in range(3):
            write_png(cfg.watch_dir / f"g{i}.png", RED, seed=i)
        assert wait_until(lambda: box.depth() == 3, 20)
        assert failures and wait_until(lambda: len(list(cfg.done_path.iterdir())) == 3)
        assert sorted(r.image_name for r in running.rows()) == ["g0.png", "g1.png", "g2.png"]
    finally:
        running.stop()


def test_images_wait_while_there_is_no_model(tmp_path, bundles):
    keys, v1, _ = bundles
    cfg = config(tmp_path, keys)
    write_png(cfg.watch_dir / "early.png", BLUE)
    running = Offline(cfg)
    try:
        time.sleep(0.3)
        assert (cfg.watch_dir / "early.png").exists() and running.agent.outbox.depth() == 0
        running.agent.models.install_bundle(v1)
        assert wait_until(lambda: running.agent.outbox.depth() == 1, 20)
    finally:
        running.stop()
