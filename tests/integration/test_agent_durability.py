"""Outbox durability end to end: a real agent process, a private Mosquitto and the hub's MQTT ingest.

The broker is stopped mid-stream, the agent is SIGKILLed twice (once while the broker is down, once
while results stream), and restarted; every image must end up in the hub's database exactly once
(after the hub's dedupe by result id), none lost, none classified twice.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.config import HubConfig
from hub.db.migrate import upgrade
from hub.db.models import Classification
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from tests.agents.helpers import BLUE, RED, make_bundle, make_keys, wait_until, write_png

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class AgentProcess:
    """``leukonet agent run`` as a child process (so it can be SIGKILLed)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ready = self.config.with_name("ready")
        ready.unlink(missing_ok=True)
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shared.cli",
                    "agent",
                    "run",
                    "--config",
                    str(self.config),
                    "--ready-file",
                    str(ready),
                ],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        assert wait_until(lambda: ready.exists() or self.proc.poll() is not None, 60), "agent never got ready"
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def outbox_depth(state: Path) -> int:
    db = sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def test_every_result_reaches_the_hub_exactly_once(tmp_path, private_broker):
    agent_id = f"durable-{uuid.uuid4().hex[:8]}"
    keys = make_keys(tmp_path)
    bundle, _ = make_bundle(tmp_path, keys)
    watch, state = tmp_path / "in", tmp_path / "state"
    config = tmp_path / "agent.yaml"
    config.write_text(
        f"agent_id: {agent_id}\nwatch_dir: {watch}\nstate_dir: {state}\nbackend: openvino\ndevice: CPU\n"
        f"model_public_key: {keys.public}\ninitial_model: {bundle}\npoll_interval_s: 0.05\nsettle_s: 0.05\n"
        f"status_interval_s: 1\nmqtt: {{host: 127.0.0.1, port: {private_broker.port}, reconnect_min_s: 1, "
        f"reconnect_max_s: 1}}\n"
    )
    hub = HubConfig.load(
        None,
        data_dir=tmp_path / "hub",
        database_url=f"sqlite:///{tmp_path / 'hub.db'}",
        mqtt={"host": "127.0.0.1", "port": private_broker.port, "client_id": f"ingest-{agent_id}"},
        # the agent is not registered with this hub: let ingest register it (off by default)
        ingest={"batch_size": 20, "batch_ms": 50, "auto_register_agents": True},
    )
    db = Database(hub.db_url)
    upgrade(db)
    ingest = IngestWorker(hub, db, IngestStats())
    ingest.start()
    assert ingest.wait_connected(10)
    agent = AgentProcess(config, tmp_path / "agent.log")
    dropped: list[str] = []

    def drop(prefix: str, n: int) -> None:
        for i in range(n):
            name = f"{prefix}{i:02d}.png"
            write_png(tmp_path / "stage" / name, BLUE if i % 2 else RED, seed=len(dropped)).rename(
                watch / name
            )
            dropped.append(name)

    def stored() -> list[str]:
        with db.session() as s:
            return list(
                s.scalars(select(Classification.image_name).where(Classification.agent_id == agent_id))
            )

    def done() -> int:
        return len(list((watch / "done").glob("*.png")))

    try:
        watch.mkdir()
        agent.start()
        # A: streaming normally.
        drop("a", 12)
        assert wait_until(lambda: len(stored()) >= 4, 30)
        # B: the broker dies mid-stream; results pile up in the outbox.
        private_broker.stop()
        drop("b", 12)
        assert wait_until(lambda: done() == 24, 30)
        assert wait_until(lambda: outbox_depth(state) > 0, 10)
        # C: SIGKILL while the broker is still down and new images are being classified.
        drop("c", 12)
        assert wait_until(lambda: done() >= 26, 30)
        agent.kill()
        private_broker.start()
        agent.start()
        assert wait_until(lambda: set(stored()) >= set(dropped), 60), agent.log.read_text()[-3000:]
        # D: SIGKILL while results stream to a live broker.
        drop("d", 24)
        assert wait_until(lambda: len(stored()) >= 40, 30)
        agent.kill()
        agent.start()
        drop("e", 6)
        assert wait_until(lambda: set(stored()) >= set(dropped), 60), agent.log.read_text()[-3000:]
        assert wait_until(lambda: outbox_depth(state) == 0, 30)
    finally:
        agent.terminate()
        ingest.stop()
    stats = ingest.stats.snapshot()
    names = stored()
    db.dispose()
    assert len(dropped) == 66
    assert Counter(names) == Counter(dropped), "a result is missing or stored twice"
    assert stats["stored"] == len(dropped)  # re-sent results (after the kills) were deduplicated
    assert sorted(p.name for p in (watch / "done").iterdir()) == sorted(dropped)
    assert list((watch / "failed").iterdir()) == [] and list(watch.glob("*.png")) == []
