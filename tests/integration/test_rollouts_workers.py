"""Rollout reconciliation with several ingest workers: the rollout ends exactly as with one.

Every ``leukonet hub ingest`` worker reconciles the reports it receives (``on_ingest``) and ticks
the rollouts; with N workers on one share group an agent's ``downloading``, ``activated`` and status
messages land on different workers, in any order and at the same moment. Two kinds of test:

* live: simulated agents (tests/hub/simfleet.py: real MQTT clients downloading bundles over HTTP)
  go through a three-stage rollout with one agent failing, once against three ingest processes on
  PostgreSQL (the web tier in this process, as gunicorn would be) and once against a single
  ``leukonet hub serve`` on SQLite; both must end in the same rollout, history and audit log;
* deterministic: a report (or a tick) applied by a second engine, as another worker process does,
  while the first worker's transaction holds the target row: it must see the committed state, not
  overwrite it (no lost update, no second ``succeeded`` in the history).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from hub.app import close_app, create_app
from hub.config import HubConfig
from hub.db.migrate import upgrade
from hub.db.models import Rollout, RolloutHistory, RolloutTarget
from hub.db.session import Database
from hub.extensions import hub_ext
from hub.mqtt.publisher import MqttPublisher
from hub.rollouts import store
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.spec import RolloutRequest, TargetSpec, TargetState
from hub.services import build_services
from shared.schemas import AgentState, AgentStatus, ModelEvent, ModelEventKind
from tests.conftest import Broker, free_port, wait_port, wait_until
from tests.hub.conftest import (
    TOKENS,
    FakeClock,
    Keys,
    build_test_bundle,
    hub_config,
    make_keys,
    migrated_app,
    upload_bundle,
)
from tests.hub.simfleet import SimFleet
from tests.integration.test_ingest_scaleout import Workers, register_agents, write_worker_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GOOD, BAD = 11, 1  # agents that activate the new model, and that fail it
# stages of 3, 3 and 6 agents; one failure in any stage still passes 0.6 and stays under 0.34
ROLLOUT = {
    "model_name": "leuko",
    "model_version": "2.0.0",
    "stages": [25, 50, 100],
    "success_threshold": 0.6,
    "error_threshold": 0.34,
    "on_failure": "pause",
    "timeout_s": 600,
}
# What the rollout must look like at the end, whatever the number of workers or the database.
EXPECTED = {
    "state": "completed",
    "stage_sizes": [3, 3, 6],
    "totals": {"succeeded": GOOD, "failed": BAD, "in_progress": 0},
    "rollout_history": ["running", "stage_1", "stage_2", "stage_3", "completed"],
    "audit": {"rollout.start": 1, "rollout.advance": 2, "rollout.complete": 1},
    "outcomes": {"succeeded": GOOD, "failed": BAD},
    "irregular_agents": [],
    "desired_messages_per_agent": {1: GOOD + BAD},
    "activations": {"2.0.0": GOOD},
}
# one target's history: desired once, maybe downloading once, then exactly one outcome
TARGET_HISTORY = re.compile(r"desired (?:downloading )?(succeeded|failed)")


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


# --- the live scenario ------------------------------------------------------------------------------


def upload_models(url: str, keys: Keys, folder: Path) -> None:
    for version in ("1.0.0", "2.0.0"):
        bundle = build_test_bundle(folder / f"leuko-{version}.zip", keys, version=version)
        with bundle.open("rb") as fh:
            r = requests.post(
                f"{url}/api/v1/models",
                files={"bundle": (bundle.name, fh)},
                headers=auth("trainer"),
                timeout=60,
            )
        assert r.status_code == 201, r.text


def run_rollout(url: str, fleet: SimFleet, lab: str) -> dict[str, Any]:
    """Connect the fleet, roll leuko 2.0.0 out to its lab, wait for the end; the summary to compare."""
    fleet.connect()
    wait_until(lambda: fleet.connected() == GOOD + BAD, 30, 0.1, "every simulated agent connected")
    r = requests.post(
        f"{url}/api/v1/rollouts",
        json={**ROLLOUT, "target": {"labs": [lab]}},
        headers=auth("admin"),
        timeout=30,
    )
    assert r.status_code == 201, r.text
    rollout_id = r.json()["rollout_id"]

    def show() -> dict[str, Any]:
        resp = requests.get(f"{url}/api/v1/rollouts/{rollout_id}", headers=auth("trainer"), timeout=30)
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    deadline = time.monotonic() + 120
    while (final := show())["state"] == "running":
        if time.monotonic() > deadline:
            stuck = {t["agent_id"]: (t["state"], t["detail"]) for t in final["targets"]}
            pytest.fail(f"rollout still running after 120 s: {final['totals']}, targets {stuck}")
        time.sleep(0.2)
    history = requests.get(
        f"{url}/api/v1/rollouts/{rollout_id}/history", headers=auth("trainer"), timeout=30
    ).json()["items"]
    audit = requests.get(
        f"{url}/api/v1/audit", params={"subject": f"rollout/{rollout_id}"}, headers=auth("admin"), timeout=30
    ).json()["items"]
    per_agent: dict[str, list[str]] = {}
    for h in history:
        if h["agent_id"] is not None:
            per_agent.setdefault(h["agent_id"], []).append(h["state"])
    outcomes: Counter[str] = Counter()
    irregular = []
    for agent_id, states in sorted(per_agent.items()):
        m = TARGET_HISTORY.fullmatch(" ".join(states))
        if m is None:
            irregular.append((agent_id, states))
        else:
            outcomes[m.group(1)] += 1
    agents = list(fleet.agents.values())
    return {
        "state": final["state"],
        "stage_sizes": [g["size"] for g in final["groups"]],
        "totals": {k: final["totals"][k] for k in ("succeeded", "failed", "in_progress")},
        "rollout_history": [h["state"] for h in history if h["agent_id"] is None],
        "audit": dict(Counter(a["action"] for a in audit)),
        "outcomes": dict(outcomes),
        "irregular_agents": irregular,
        "desired_messages_per_agent": dict(Counter(len(a.desired_seen) for a in agents)),
        "activations": dict(Counter(v for a in agents for v in a.activated)),
    }


def make_fleet(broker: Broker, run: str, lab: str) -> SimFleet:
    fleet = SimFleet(
        broker.host, broker.port, TOKENS["agent"], loop_threads=2, http_workers=4, prefix=f"rw{run}"
    )
    fleet.add(GOOD, lab=lab)
    fleet.add(BAD, lab=lab, fail=True)
    return fleet


@pytest.fixture
def workers_factory(tmp_path: Path) -> Iterator[Callable[[Path], Workers]]:
    made: list[Workers] = []

    def make(config: Path) -> Workers:
        made.append(Workers(config, tmp_path))
        return made[-1]

    try:
        yield make
    finally:
        for w in made:
            w.stop_all()
            print(w.logs())  # shown by pytest when the test failed


def test_three_workers_on_postgresql_end_the_rollout_as_one_would(
    tmp_path, private_broker, postgres_url, workers_factory
):
    run = uuid.uuid4().hex[:8]
    keys = make_keys(tmp_path / "keys")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the web tier (what gunicorn runs): API and bundle downloads, no ingest, no ticker
    cfg = hub_config(
        tmp_path,
        keys,
        database_url=postgres_url,
        public_url=url,
        mqtt={"host": private_broker.host, "port": private_broker.port, "client_id": f"web-{run}"},
        ingest={"auto_register_agents": False},
    )
    services = build_services(cfg)
    upgrade(services.db)
    app = create_app(cfg, services)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    lab = f"lab-{run}"
    fleet = make_fleet(private_broker, run, lab)
    config = write_worker_config(
        tmp_path / "ingest.yaml",
        tmp_path,
        postgres_url,
        private_broker,
        f"rw{run}",
        public_url=url,  # stage advances publish bundle URLs built from it
        ingest={"batch_size": 100, "batch_ms": 20},
        rollouts={"tick_s": 0.2},
    )
    workers = workers_factory(config)
    try:
        workers.start(*(f"rw-{run}-w{i}" for i in (1, 2, 3)))
        upload_models(url, keys, tmp_path)
        register_agents(config, list(fleet.agents), lab)
        summary = run_rollout(url, fleet, lab)
    finally:
        fleet.close()
        server.shutdown()
        thread.join(10)
        server.server_close()
        close_app(app)
    assert summary == EXPECTED
    assert workers.stop_all() == dict.fromkeys(workers.all, 0)


def test_one_hub_serve_on_sqlite_ends_the_rollout_the_same_way(tmp_path, private_broker):
    run = uuid.uuid4().hex[:8]
    keys = make_keys(tmp_path / "keys")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db_url = f"sqlite:///{tmp_path / 'hub.db'}"
    config = tmp_path / "hub.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "hub"),
                "database_url": db_url,
                "public_url": url,
                "port": port,
                "secret_key": "rollout-workers-test-secret-key-0123456789",
                "tokens": [{"name": f"t-{role}", "token": tok, "role": role} for role, tok in TOKENS.items()],
                "trusted_keys": [str(keys.public)],
                "mqtt": {
                    "host": private_broker.host,
                    "port": private_broker.port,
                    "client_id": f"serve-{run}",
                },
                "ingest": {"batch_size": 100, "batch_ms": 20},
                "rollouts": {"tick_s": 0.2},
            }
        )
    )
    db = Database(db_url)
    upgrade(db)
    lab = f"lab-{run}"
    fleet = make_fleet(private_broker, run, lab)
    register_agents(config, list(fleet.agents), lab)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "hub", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        assert wait_port("127.0.0.1", port, 60), log.read_text()[-4000:]
        upload_models(url, keys, tmp_path)
        summary = run_rollout(url, fleet, lab)
    finally:
        fleet.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        db.dispose()
        print(log.read_text()[-6000:])  # shown by pytest when the test failed
    assert summary == EXPECTED
    assert proc.returncode == 0


# --- two workers at the same target row ---------------------------------------------------------------


class Race:
    """A rollout of leuko 2.0.0 to one agent on PostgreSQL, and a second engine ("worker B") with a
    database pool and broker connection of its own, as in another ingest process."""

    def __init__(self, app: Any, cfg: HubConfig) -> None:
        self.services = hub_ext.for_app(app)
        self.clock = FakeClock()
        self.services.rollouts.clock = self.clock
        self.db_b = Database(cfg.db_url)
        self.publisher_b = MqttPublisher(cfg.mqtt)
        self.engine_b = RolloutEngine(
            self.db_b, self.publisher_b, cfg.public_url, cfg.rollouts, clock=self.clock
        )
        self.agent = f"race-{uuid.uuid4().hex[:6]}"  # an agent id target: the hub creates its row
        self.rollout_id = self.services.rollouts.start(
            RolloutRequest(
                model_name="leuko",
                model_version="2.0.0",
                target=TargetSpec(agents=[self.agent]),
                stages=[100],
                timeout_s=60,
            ),
            "test",
        )

    def close(self) -> None:
        self.publisher_b.close()
        self.db_b.dispose()

    def activate_in_worker_a(self) -> Session:
        """Worker A applies ``activated`` and has not committed yet: its transaction holds the row."""
        s = self.services.db.session()
        rollout = s.scalar(select(Rollout).where(Rollout.rollout_id == self.rollout_id))
        target = s.scalar(
            select(RolloutTarget).where(RolloutTarget.rollout_id == self.rollout_id).with_for_update()
        )
        assert rollout is not None and target is not None and target.state == TargetState.DESIRED.value
        store.set_target_state(s, rollout, target, TargetState.SUCCEEDED, "device SIM", self.clock())
        s.flush()
        return s

    def states(self) -> tuple[str, list[str]]:
        """The target's state and its history, oldest first."""
        with self.services.db.session() as s:
            target = s.scalar(select(RolloutTarget.state).where(RolloutTarget.rollout_id == self.rollout_id))
            history = list(
                s.scalars(
                    select(RolloutHistory.state)
                    .where(
                        RolloutHistory.rollout_id == self.rollout_id, RolloutHistory.agent_id == self.agent
                    )
                    .order_by(RolloutHistory.id)
                )
            )
        assert target is not None
        return target, history

    def waiting_on_a_lock(self) -> bool:
        with self.services.db.session() as s:
            n = s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
        return bool(n)


@pytest.fixture
def race(tmp_path: Path, private_broker: Broker, postgres_url: str) -> Iterator[Race]:
    keys = make_keys(tmp_path / "keys")
    cfg = hub_config(
        tmp_path,
        keys,
        database_url=postgres_url,
        mqtt={
            "host": private_broker.host,
            "port": private_broker.port,
            "client_id": f"race-{uuid.uuid4().hex[:6]}",
        },
    )
    app = migrated_app(cfg)
    client = app.test_client()
    for version in ("1.0.0", "2.0.0"):
        bundle = build_test_bundle(tmp_path / f"leuko-{version}.zip", keys, version=version)
        assert upload_bundle(client, bundle).status_code == 201
    r = Race(app, cfg)
    try:
        yield r
    finally:
        r.close()
        close_app(app)


def in_worker_b(race: Race, action: Callable[[], object]) -> Callable[[], None]:
    """Run ``action`` on a thread (worker B); returns a join that re-raises what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def join() -> None:
        t.join(30)
        assert not t.is_alive(), "worker B is still blocked 30 s after worker A committed"
        assert not errors, errors

    return join


def report(race: Race, kind: str) -> list[object]:
    if kind == "status":
        return [
            AgentStatus(
                agent_id=race.agent, state=AgentState.ONLINE, model_name="leuko", model_version="2.0.0"
            )
        ]
    return [
        ModelEvent(
            agent_id=race.agent,
            event=ModelEventKind(kind),
            model_name="leuko",
            model_version="2.0.0",
            rollout_id=race.rollout_id,
        )
    ]


@pytest.mark.parametrize("kind", ["downloading", "status", "activated", "tick past the timeout"])
def test_a_second_worker_sees_what_the_first_committed(race, kind):
    """Worker A committed ``succeeded``; worker B's report (or tick) must not overwrite or repeat it."""
    s = race.activate_in_worker_a()
    try:
        if kind == "tick past the timeout":
            race.clock.advance(3600)
            join = in_worker_b(race, race.engine_b.tick)
        else:
            messages = report(race, kind)
            join = in_worker_b(race, lambda: race.engine_b.handle(messages))
        wait_until(race.waiting_on_a_lock, 15, 0.05, "worker B waiting for worker A's row lock")
        s.commit()
    finally:
        s.close()
    join()
    state, history = race.states()
    assert (state, history) == ("succeeded", ["desired", "succeeded"])
