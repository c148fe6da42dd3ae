"""Rollouts end to end on the real shared Mosquitto and PostgreSQL, with simulated agents (real MQTT
clients downloading bundles over HTTP) and the operator CLI against the live hub.

Every test uses its own lab name (targets select it, so agents other suites left on the shared
broker are never touched), agent ids, MQTT client ids and share group; retained messages and the
hub's persistent session are cleared afterwards.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from hub.app import close_app, create_app
from hub.db.migrate import upgrade
from hub.extensions import hub_ext
from hub.ingest import IngestStats, IngestWorker
from hub.operator.agents import agents as agents_cli
from hub.operator.models import models as models_cli
from hub.operator.rollout import rollout as rollout_cli
from hub.rollouts.ticker import RolloutTicker
from hub.services import build_services
from tests.conftest import free_port, wait_until
from tests.hub.conftest import TOKENS, build_test_bundle, hub_config, make_keys
from tests.hub.simfleet import SimFleet, clear_session

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    url: str
    lab: str
    fleet: SimFleet
    runner: CliRunner

    def cli(self, group: Any, *args: str) -> Any:
        return self.runner.invoke(group, [*args, "--hub", self.url, "--token", TOKENS["admin"]])

    def start(self, *args: str) -> str:
        r = self.cli(rollout_cli, "start", "leuko", "2.0.0", "--lab", self.lab, *args, "--json")
        assert r.exit_code == 0, r.output
        rollout_id: str = json.loads(r.output)["rollout_id"]
        return rollout_id

    def status(self, rollout_id: str) -> dict[str, Any]:
        r = self.cli(rollout_cli, "status", rollout_id, "--json")
        assert r.exit_code == 0, r.output
        data: dict[str, Any] = json.loads(r.output)
        return data

    def watch(self, rollout_id: str, timeout: float = 60) -> Any:
        return self.cli(
            rollout_cli, "status", rollout_id, "--watch", "--interval", "0.2", "--timeout", str(timeout)
        )


@pytest.fixture
def stack(tmp_path, shared_broker, postgres_url) -> Iterator[Stack]:
    run = uuid.uuid4().hex[:8]
    keys = make_keys(tmp_path / "keys")
    port = free_port()
    cfg = hub_config(
        tmp_path,
        keys,
        database_url=postgres_url,
        public_url=f"http://127.0.0.1:{port}",
        mqtt={
            "host": shared_broker.host,
            "port": shared_broker.port,
            "client_id": f"hub-ro-{run}",
            "share_group": f"ro{run}",
        },
        ingest={"batch_size": 100, "batch_ms": 20},
        rollouts={"tick_s": 0.2},
    )
    services = build_services(cfg)
    db = services.db
    upgrade(db)
    app = create_app(cfg, services)
    engine = hub_ext.for_app(app).rollouts
    worker = IngestWorker(cfg, db, IngestStats(), on_commit=engine.on_ingest)
    worker.start()
    ticker = RolloutTicker(engine, cfg.rollouts.tick_s)
    ticker.start()
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fleet = SimFleet(
        shared_broker.host,
        shared_broker.port,
        TOKENS["agent"],
        loop_threads=2,
        http_workers=4,
        prefix=f"ro{run}",
    )
    s = Stack(f"http://127.0.0.1:{port}", f"lab-{run}", fleet, CliRunner())
    try:
        assert worker.wait_connected(10)
        for version in ("1.0.0", "2.0.0"):
            bundle = build_test_bundle(tmp_path / f"leuko-{version}.zip", keys, version=version)
            r = s.cli(models_cli, "upload", str(bundle))
            assert r.exit_code == 0, r.output
        yield s
    finally:
        fleet.close()
        ticker.stop()
        worker.stop()
        server.shutdown()
        thread.join(10)
        server.server_close()
        close_app(app)
        clear_session(shared_broker.port, f"hub-ro-{run}", host=shared_broker.host)


def known_agents(stack: Stack, n: int) -> None:
    """Wait until the hub has seen ``n`` agents of the stack's lab (their status went through ingest)."""

    def count() -> bool:
        r = stack.cli(agents_cli, "list", "--json")
        return sum(1 for a in json.loads(r.output)["items"] if a["lab"] == stack.lab) == n

    wait_until(count, 20, 0.1, f"{n} agents known to the hub")


def test_staged_rollout_advances_and_an_offline_agent_converges(stack):
    online = stack.fleet.add(7, lab=stack.lab)
    late = stack.fleet.add(1, lab=stack.lab)[0]
    stack.fleet.connect([*online, late])
    known_agents(stack, 8)
    stack.fleet.disconnect(late)  # offline (last status says so) before the rollout starts

    rollout_id = stack.start("--stages", "25,100", "--success-threshold", "0.5", "--timeout", "120")
    # stage 2 starts once half of stage 1 succeeded (the offline agent may be in either stage);
    # until it returns, the rollout cannot complete
    wait_until(lambda: stack.status(rollout_id)["current_stage"] == 2, 30, 0.1, "stage 2")
    wait_until(lambda: stack.status(rollout_id)["totals"]["succeeded"] == 7, 30, 0.1, "7 agents activated")
    shown = stack.status(rollout_id)
    assert shown["state"] == "running" and shown["totals"]["in_progress"] == 1
    assert shown["groups"][0]["size"] == 2 and shown["groups"][1]["size"] == 6
    assert all(a.activated == ["2.0.0"] for a in online)

    stack.fleet.connect([late])  # back online: the retained desired state is waiting for it
    r = stack.watch(rollout_id)
    assert r.exit_code == 0, r.output  # completed
    assert "completed" in r.output
    assert late.activated == ["2.0.0"] and late.desired_seen[-1].rollout_id == rollout_id
    assert stack.status(rollout_id)["totals"]["succeeded"] == 8


def test_failure_rate_rolls_back_every_agent_to_its_previous_model(stack):
    good = stack.fleet.add(4, lab=stack.lab)
    bad = stack.fleet.add(2, lab=stack.lab, fail=True)
    stack.fleet.connect()
    known_agents(stack, 6)
    rollout_id = stack.start("--stages", "100", "--error-threshold", "0.2", "--on-failure", "rollback")
    r = stack.watch(rollout_id)
    assert r.exit_code == 1, r.output  # rolled back
    assert "above the error threshold" in r.output and "simulated failure" in r.output

    def all_back() -> bool:
        return stack.status(rollout_id)["totals"]["by_state"].get("rolled_back", 0) == 6

    wait_until(all_back, 30, 0.1, "every target rolled back")
    assert all(a.model_version == "1.0.0" for a in [*good, *bad])
    assert all(a.failed == ["2.0.0"] and a.activated == [] for a in bad)
    # the deleted-in-use guard: agents run 1.0.0, so it cannot go; 2.0.0 is no longer used by anyone
    r = stack.cli(models_cli, "delete", "leuko", "1.0.0")
    assert r.exit_code == 1 and "in use" in r.output and "runs it" in r.output
    r = stack.cli(models_cli, "delete", "leuko", "2.0.0")
    assert r.exit_code == 0 and "deleted leuko 2.0.0" in r.output


def test_failure_rate_pauses_when_configured_and_resume_is_audited(stack):
    stack.fleet.add(3, lab=stack.lab, fail=True)
    stack.fleet.connect()
    known_agents(stack, 3)
    rollout_id = stack.start("--stages", "100", "--error-threshold", "0.5", "--on-failure", "pause")
    r = stack.watch(rollout_id)
    assert r.exit_code == 3, r.output  # paused: an operator decides
    r = stack.cli(models_cli, "delete", "leuko", "2.0.0")
    assert r.exit_code == 1 and "is rolling it out" in r.output
    r = stack.cli(rollout_cli, "abort", rollout_id, "--reason", "bad build")
    assert r.exit_code == 0 and "aborted" in r.output
    r = stack.cli(rollout_cli, "abort", rollout_id)
    assert r.exit_code == 1 and "invalid_state" in r.output
    r = stack.cli(rollout_cli, "status", "no-such-rollout")
    assert r.exit_code == 1 and "does not exist" in r.output
