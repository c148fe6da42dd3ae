"""Scale-out ingest: real ``leukonet hub ingest`` processes on one shared subscription, a private
Mosquitto and a fresh PostgreSQL database; a worker is SIGKILLed while results stream.

What docs/scaling.md promises, and these tests hold:

* a worker killed mid-stream (or stopped cleanly) loses nothing once a worker runs again under
  **its** client id: the messages it had received but not acknowledged, and those the broker went
  on routing to its persistent session while it was away, arrive then, and the redelivered ones
  are dropped by result id (every result stored exactly once);
* a worker under a **new** client id only adds capacity: Mosquitto keeps the dead member in the
  group's rotation and queues its share for it, so the stream is complete only after the dead id
  runs again.

The broker is our own (fixture ``broker``) because the tests kill processes and leave sessions
behind; each test has its own share group, client ids and database. Worker logs are printed on
failure (pytest shows a failing test's captured output).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import func, select

from hub.cli import cli as hub_cli
from hub.db.migrate import upgrade
from hub.db.models import Classification
from hub.db.session import Database
from shared import topics
from tests.conftest import Broker, free_port, wait_until
from tests.hub.conftest import make_result

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N = 6000  # results in the stream
PUBLISHERS = 4  # MQTT clients publishing at once, each for AGENTS_PER_PUBLISHER agents
AGENTS_PER_PUBLISHER = 5


# --- the broker -------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto of this test's own, with docker/mosquitto.conf's queue and in-flight settings:
    persistent sessions saved in ``tmp_path``, a deep queue per session, 100 messages in flight."""
    data = tmp_path / "mosquitto"
    data.mkdir()
    conf = tmp_path / "mosquitto.conf"
    port = free_port()
    # as root, mosquitto would drop to the `mosquitto` user, which cannot write into tmp_path
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {data}/\nautosave_interval 30\nmax_queued_messages 1000000\n"
        "max_inflight_messages 2000\n"
    )
    b = Broker("127.0.0.1", port, config_path=conf)
    b.start()
    try:
        yield b
    finally:
        b.stop()


# --- worker processes -------------------------------------------------------------------------


class IngestProcess:
    """One ``leukonet hub ingest --client-id ID`` child process; each start logs to a file of its own."""

    def __init__(self, config: Path, client_id: str, log_dir: Path) -> None:
        self.config, self.client_id, self.log_dir = config, client_id, log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def log(self) -> Path:
        return self.logs[-1]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, f"{self.client_id} is running"
        log = self.log_dir / f"ingest-{self.client_id}-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shared.cli",
                    "hub",
                    "ingest",
                    "--config",
                    str(self.config),
                    "--client-id",
                    self.client_id,
                ],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_subscribed(self, timeout: float = 60) -> str:
        """Wait for the worker's ``ingest_connected`` line (its SUBSCRIBE is sent); returns that line."""

        def line() -> str | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"{self.client_id} exited with {self.proc.returncode}:\n{self.tail()}")
            found = [x for x in self.log.read_text().splitlines() if "ingest_connected" in x]
            return found[0] if found else None

        found: str = wait_until(line, timeout, 0.1, f"{self.client_id} subscribed")
        return found

    def kill(self) -> None:
        """SIGKILL: no flush, no PUBACK, no DISCONNECT (the broker sees the socket close)."""
        assert self.proc is not None and self.proc.poll() is None, self.tail()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait (the worker flushes and acknowledges); SIGKILL when it hangs. The exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, chars: int = 4000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-chars:]}" for p in self.logs if p.exists())


def write_worker_config(path: Path, tmp: Path, db_url: str, broker: Broker, group: str, **extra: Any) -> Path:
    """The YAML every worker of a test shares (``--client-id`` tells them apart)."""
    cfg: dict[str, Any] = {
        "data_dir": str(tmp / "hub"),
        "database_url": db_url,
        "mqtt": {"host": broker.host, "port": broker.port, "share_group": group, "keepalive": 10},
        "ingest": {"batch_size": 200, "batch_ms": 50},
        "log_level": "INFO",
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def register_agents(config: Path, agent_ids: list[str], lab: str) -> None:
    """``leukonet hub agents add`` for each agent, as an operator registers agents on a hub whose
    broker does not enroll them (the workers run with ``ingest.auto_register_agents`` off)."""
    runner = CliRunner()
    for agent_id in agent_ids:
        r = runner.invoke(hub_cli, ["agents", "add", agent_id, "--lab", lab, "--config", str(config)])
        assert r.exit_code == 0, r.output


class Workers:
    """The ingest processes of one test; all stopped at teardown, their logs printed."""

    def __init__(self, config: Path, log_dir: Path) -> None:
        self.config, self.log_dir = config, log_dir
        self.all: dict[str, IngestProcess] = {}

    def start(self, *client_ids: str) -> list[IngestProcess]:
        """Start (or restart) the workers ``client_ids`` at once; wait until each has subscribed."""
        started = [self.all.setdefault(c, IngestProcess(self.config, c, self.log_dir)) for c in client_ids]
        for worker in started:
            worker.start()
        for worker in started:
            worker.wait_subscribed()
        return started

    def stop_all(self) -> dict[str, int | None]:
        return {cid: w.stop() for cid, w in self.all.items()}

    def logs(self) -> str:
        return "\n".join(w.tail() for w in self.all.values())


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


# --- the result stream --------------------------------------------------------------------------


class ResultStream:
    """``N`` results with unique ids from ``PUBLISHERS`` MQTT clients (QoS 1, each a few agents)."""

    def __init__(self, broker: Broker, run: str, total: int = N) -> None:
        self.broker, self.run = broker, run
        self.agents = [f"so-{run}-{i:02d}" for i in range(PUBLISHERS * AGENTS_PER_PUBLISHER)]
        self.messages: list[tuple[str, bytes]] = []
        self.ids: list[str] = []
        for i in range(total):
            r = make_result(agent_id=self.agents[i % len(self.agents)], lab="Scale lab")
            self.messages.append((topics.build(r.agent_id, topics.Kind.RESULTS), r.to_json()))
            self.ids.append(str(r.result_id))
        self.published = 0

    def publish(self, lo: int, hi: int) -> Publishing:
        """Publish results ``lo:hi`` from every publisher at once, in the background."""
        self.published = hi
        return Publishing(self.broker, f"{self.run}-{lo}", self.messages[lo:hi])


class Publishing:
    """``messages`` published at QoS 1 by ``PUBLISHERS`` clients at once, on threads of their own."""

    def __init__(self, broker: Broker, name: str, messages: list[tuple[str, bytes]]) -> None:
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._one, args=(broker, f"so-pub-{name}-{k}", messages[k::PUBLISHERS]))
            for k in range(PUBLISHERS)
        ]
        for t in self.threads:
            t.start()

    def _one(self, broker: Broker, client_id: str, mine: list[tuple[str, bytes]]) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        try:
            c.connect(broker.host, broker.port)
            c.loop_start()
            for start in range(0, len(mine), 100):
                infos = [c.publish(t, p, qos=1) for t, p in mine[start : start + 100]]
                for info in infos:
                    info.wait_for_publish(30)
                    if not info.is_published():
                        raise RuntimeError(f"{client_id}: no PUBACK within 30 s")
        except Exception as exc:
            self.errors.append(exc)
        finally:
            c.disconnect()
            c.loop_stop()

    def join(self, timeout: float = 120) -> None:
        """Wait until the broker acknowledged every message (fails the test otherwise)."""
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(deadline - time.monotonic(), 0.1))
        assert not any(t.is_alive() for t in self.threads), f"publishing took longer than {timeout} s"
        assert not self.errors, self.errors


# --- database checks ------------------------------------------------------------------------------


def stored_count(db: Database) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Classification)) or 0)


def wait_stable(db: Database, quiet_s: float = 3.0, timeout: float = 90) -> int:
    """The stored count once it has not changed for ``quiet_s`` (the live workers are idle)."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = stored_count(db)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return n
        time.sleep(0.2)
    pytest.fail(f"ingest never went quiet within {timeout} s (last count {last})")


def assert_exactly_once(db: Database, ids: list[str]) -> None:
    with db.session() as s:
        rows = [str(r) for r in s.scalars(select(Classification.result_id))]
    assert len(rows) == len(ids), f"{len(rows)} rows for {len(ids)} results"
    assert len(set(rows)) == len(rows), "a result is stored twice"
    missing = set(ids) - set(rows)
    assert not missing, f"{len(missing)} results missing, e.g. {sorted(missing)[:5]}"


# --- the tests ------------------------------------------------------------------------------------


@pytest.fixture
def scaleout(tmp_path: Path, broker: Broker, postgres_url: str, workers_factory: Any) -> Iterator[Any]:
    """Three workers subscribed on a share group of this test, a migrated database, the stream."""
    run = uuid.uuid4().hex[:8]
    db = Database(postgres_url)
    upgrade(db)
    stream = ResultStream(broker, run)
    config = write_worker_config(tmp_path / "hub.yaml", tmp_path, postgres_url, broker, f"so{run}")
    register_agents(config, stream.agents, "Scale lab")
    workers = workers_factory(config)
    ids = [f"so-{run}-w{i}" for i in (1, 2, 3)]
    workers.start(*ids)
    # one result first: once it is stored, a member of the group is subscribed and none can be dropped
    stream.publish(0, 1).join()
    wait_until(lambda: stored_count(db) == 1, 30, 0.1, "the first result stored")
    try:
        yield run, db, stream, workers, ids
    finally:
        db.dispose()


def kill_mid_stream(db: Database, stream: ResultStream, victim: IngestProcess) -> None:
    """Stream results 1..2400 and SIGKILL ``victim`` while the workers are working through them."""
    publishing = stream.publish(1, 2400)
    at_kill = wait_until(lambda: (n := stored_count(db)) >= 800 and n, 60, 0.02, "800 results stored")
    victim.kill()
    publishing.join()
    assert at_kill < 2400, "the stream was already stored: the kill was not mid-stream"


def test_workers_killed_or_stopped_lose_nothing_once_restarted_under_their_ids(scaleout):
    _run, db, stream, workers, (w1, w2, _w3) = scaleout
    kill_mid_stream(db, stream, workers.all[w1])
    assert workers.all[w2].stop() == 0  # a clean stop (SIGTERM): stores and acknowledges what it holds
    stream.publish(2400, 4200).join()  # only w3 runs: w1's and w2's shares wait in their sessions
    held = stream.published - wait_stable(db)
    assert held > 0, "Mosquitto handed the absent members' shares to w3 (docs/scaling.md says not)"

    (restarted,) = workers.start(w1)  # what a restart policy does: the same --client-id
    assert "session_present=True" in restarted.wait_subscribed(), restarted.tail()
    # w1's backlog arrives; w2's share still waits: a clean stop does not leave the group either
    assert stream.published - held < wait_stable(db) < stream.published

    workers.start(w2)
    stream.publish(4200, N).join()
    wait_until(lambda: stored_count(db) >= N, 120, 0.2, f"all {N} results stored")
    assert wait_stable(db, quiet_s=2) == N
    assert_exactly_once(db, stream.ids)
    assert workers.stop_all() == dict.fromkeys(workers.all, 0)


def test_a_new_client_id_adds_capacity_but_the_dead_id_must_run_again(scaleout):
    run, db, stream, workers, (w1, _w2, _w3) = scaleout
    kill_mid_stream(db, stream, workers.all[w1])
    (w4,) = workers.start(f"so-{run}-w4")  # a replacement under a new id joins the group
    assert "session_present=False" in w4.wait_subscribed()
    stream.publish(2400, N).join()
    short = N - wait_stable(db)
    # the dead session stays in the group's rotation: the new member does not take over its share
    assert short > 0, "every result arrived without the dead id (docs/scaling.md says it cannot)"

    workers.start(w1)  # the dead id runs again (on any machine): its session drains
    wait_until(lambda: stored_count(db) >= N, 120, 0.2, f"all {N} results stored")
    assert wait_stable(db, quiet_s=2) == N
    assert_exactly_once(db, stream.ids)
    assert workers.stop_all() == dict.fromkeys(workers.all, 0)
