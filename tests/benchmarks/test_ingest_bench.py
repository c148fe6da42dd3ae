"""Benchmark: how fast the hub drains a backlog of results from Mosquitto into PostgreSQL.

One run starts one private Mosquitto (anonymous, no persistence, ``max_queued_messages 1000000``
and ``max_inflight_messages`` as docker/mosquitto.conf sets it) and creates one fresh PostgreSQL
database (dropped afterwards). Each consumer runs in a process of its own (``spawn``): it connects
once with its persistent session (QoS 1 subscriptions on the hub's filters) and disconnects, then
``LEUKONET_BENCH_INGEST_MESSAGES`` results (default 20,000) are published at QoS 1 by 10
publishers (10 agents, one each, all registered, their model in the registry, so admission runs as
in production) and the broker queues them for the offline session. Only then are the consumers told
to go, so what is timed is the consumers alone: from just before the first connects to the moment
the last message is done:

* (a) a bare paho subscriber (paho-mqtt 2.x, VERSION2 callbacks, PUBACK sent by paho after
  ``on_message``, which only keeps the payload): until its last message arrived;
* (b) one hub ingest worker, the real :class:`hub.ingest.IngestWorker` with the default
  ``ingest.batch_size`` / ``batch_ms``: validate, admit, write and commit in batches, PUBACK after
  commit; until the commit that stored the last row;
* (c) two such workers, each in its own process (as ``leukonet hub ingest`` scales out), on a
  shared subscription (``$share/<group>/...``): until the last commit of either.

Each run checks zero loss and zero duplicates: the rows of that run's agents equal the messages
published, with as many distinct ``result_id`` values (paho: as many distinct payloads). Each
consumer process also reports its CPU seconds (every thread). Printed (``make bench``)::

    BENCH paho_subscriber_msgs_per_s <messages / s> msg/s
    BENCH hub_ingest_rows_per_s <rows / s> rows/s
    BENCH hub_ingest_vs_paho_ratio <hub rows/s over paho msg/s> ratio
    BENCH hub_ingest_2_workers_rows_per_s <rows / s> rows/s

Every consumer process first calls :func:`hub.ingest.tune_gc`, the garbage-collector setting meant
for the composition roots of ``leukonet hub ingest`` and ``hub serve``. Mosquitto 2.0.11 (seen
here) holds a session to ``max_inflight_messages`` unacknowledged messages only until that first
window is acknowledged, then sends the rest of the backlog as fast as the consumer reads: the hub's
batches fill to ``batch_size``.

Knobs: ``LEUKONET_BENCH_INGEST_MESSAGES`` (default 20000), ``LEUKONET_BENCH_INGEST_INFLIGHT`` (the
broker's ``max_inflight_messages``, default 100 as in docker/mosquitto.conf; 0: unlimited),
``LEUKONET_BENCH_INGEST_BATCH`` (``ingest.batch_size``, default: the config's default),
``LEUKONET_BENCH_INGEST_TUNE_GC=0`` (CPython's default collector settings). It measures and fails
only on loss, duplicates or a consumer that stalls; no speed assert.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from hub.config import HubConfig, IngestSection
from hub.db.migrate import upgrade
from hub.db.models import Agent, Classification, ModelVersion
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker, tune_gc
from shared import topics
from tests.conftest import Broker, free_port
from tests.hub.conftest import hub_config, make_result

pytestmark = pytest.mark.bench

MESSAGES = int(os.environ.get("LEUKONET_BENCH_INGEST_MESSAGES", "20000"))
INFLIGHT = int(os.environ.get("LEUKONET_BENCH_INGEST_INFLIGHT", "100"))
TUNE_GC = os.environ.get("LEUKONET_BENCH_INGEST_TUNE_GC", "1") != "0"
PUBLISHERS = 10
STALL_S = 60.0  # a consumer that stores nothing for this long has lost messages: fail


def start_bench_broker(folder: Path, inflight: int = INFLIGHT) -> Broker:
    """An anonymous Mosquitto without persistence on a free loopback port."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed: run `make services` or apt-get install -y mosquitto")
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages 1000000\nmax_inflight_messages {inflight}\n"
    )
    broker = Broker("127.0.0.1", port, config_path=conf)
    broker.start()
    return broker


@dataclass
class Backlog:
    """The messages of one run: ``payloads[i]`` are publisher ``i``'s, all on ``topics_[i]``."""

    agents: list[str]
    topics_: list[str]
    payloads: list[list[bytes]]

    @property
    def total(self) -> int:
        return sum(len(p) for p in self.payloads)


def make_backlog(prefix: str, n: int, publishers: int = PUBLISHERS) -> Backlog:
    """``n`` valid results from ``publishers`` agents called ``<prefix>-NN``."""
    agents = [f"{prefix}-{i:02d}" for i in range(publishers)]
    payloads: list[list[bytes]] = [[] for _ in agents]
    for k in range(n):
        i = k % publishers
        payloads[i].append(make_result(agent_id=agents[i]).to_json())
    return Backlog(agents, [topics.build(a, topics.Kind.RESULTS) for a in agents], payloads)


def publish_backlog(port: int, backlog: Backlog) -> None:
    """Each publisher on its own thread and connection, QoS 1, every PUBACK awaited."""
    errors: list[BaseException] = []

    def publish(i: int) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}")
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        try:
            infos = [c.publish(backlog.topics_[i], p, qos=1) for p in backlog.payloads[i]]
            for info in infos:
                info.wait_for_publish(120)
                assert info.is_published(), "a publish was not acknowledged"
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            errors.append(exc)
        finally:
            c.disconnect()
            c.loop_stop()

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(len(backlog.agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def prepare_database(url: str, agents: Sequence[str]) -> Database:
    """Migrate, register ``agents`` and the model their results name (as enrollment and upload do)."""
    db = Database(url)
    upgrade(db)
    with db.transaction() as s:
        if s.scalar(select(ModelVersion).where(ModelVersion.name == "leuko")) is None:
            s.add(
                ModelVersion(
                    name="leuko",
                    version="1.0.0",
                    sha256="b" * 64,
                    manifest={"labels": ["ALL", "normal"]},
                    storage_path="bb/bench.zip",
                    size_bytes=1,
                    uploaded_by="bench",
                )
            )
        s.add_all(Agent(agent_id=a, lab="Lab A", state="unknown", vitals={}) for a in agents)
    return db


def bench_config(tmp: Path, database_url: str, port: int, client_id: str = "hub-bench") -> HubConfig:
    """The hub config of a bench worker: production ingest defaults, registered agents only."""
    defaults = IngestSection()
    ingest = {
        "batch_size": int(os.environ.get("LEUKONET_BENCH_INGEST_BATCH") or defaults.batch_size),
        "batch_ms": defaults.batch_ms,
        "auto_register_agents": False,
    }
    return hub_config(
        tmp,
        None,
        database_url=database_url,
        mqtt={"host": "127.0.0.1", "port": port, "client_id": client_id},
        ingest=ingest,
        log_level="WARNING",
    )


# --- consumers, each in a process of its own --------------------------------------------------


@dataclass
class Report:
    """What one consumer process measured."""

    #: ``time.time()`` just before it connected
    started: float
    #: ``time.time()`` of its last message's arrival (paho) or of its last commit (hub)
    finished: float
    #: the process's CPU seconds (every thread) from ``started`` to the end of the run
    cpu_s: float
    #: paho: ``messages`` and ``distinct``; hub: the stats snapshot and ``lags`` observed
    detail: dict[str, Any]


@dataclass
class Consumer:
    """How to start one consumer process: ``role`` is ``paho`` or ``hub``."""

    role: str
    port: int
    client_id: str
    folder: Path
    database_url: str = ""
    share_group: str | None = None


def consume(consumer: Consumer, expected: int, sync: dict[str, Any]) -> None:
    """A consumer process: create its persistent session, say ready, wait for go, drain, report.

    ``sync`` holds the run's ``ready`` / ``go`` / ``stop`` events, this consumer's ``done`` count
    (a shared integer the parent sums) and the ``reports`` queue.
    """
    try:
        if TUNE_GC:
            tune_gc()
        run = _drain_with_paho if consumer.role == "paho" else _drain_with_worker
        sync["reports"].put(run(consumer, expected, sync))
    except BaseException:  # noqa: BLE001 - handed to the parent, which fails the test with it
        sync["reports"].put(traceback.format_exc())
        sync["ready"].set()


def _drain_with_paho(consumer: Consumer, expected: int, sync: dict[str, Any]) -> Report:
    got: list[bytes] = []
    done = threading.Event()
    arrived = [0.0]

    def client() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=consumer.client_id, clean_session=False)
        c.on_connect = lambda c, *_: c.subscribe([(topics.subscription(k), 1) for k in topics.AGENT_KINDS])
        c.on_message = on_message
        return c

    def on_message(c: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        if len(got) >= expected:
            arrived[0] = time.time()
            sync["done"].value = len(got)
            done.set()
        elif not len(got) % 1024:  # progress for the parent's stall check, cheaply
            sync["done"].value = len(got)

    subscribed = threading.Event()
    first = client()
    first.on_subscribe = lambda *_: subscribed.set()
    first.connect("127.0.0.1", consumer.port)
    first.loop_start()
    assert subscribed.wait(10), "the paho subscriber did not subscribe"
    first.disconnect()
    first.loop_stop()
    sync["ready"].set()
    sync["go"].wait()
    c = client()
    cpu0, started = time.process_time(), time.time()
    c.connect("127.0.0.1", consumer.port)
    c.loop_start()
    sync["stop"].wait()
    cpu = time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    return Report(started, arrived[0], cpu, {"messages": len(got), "distinct": len(set(got))})


def _drain_with_worker(consumer: Consumer, expected: int, sync: dict[str, Any]) -> Report:
    config = bench_config(consumer.folder, consumer.database_url, consumer.port, consumer.client_id)
    if consumer.share_group:
        config = config.model_copy(
            update={"mqtt": config.mqtt.model_copy(update={"share_group": consumer.share_group})}
        )
    db = Database(consumer.database_url)
    try:
        first = IngestWorker(config, db, IngestStats())
        first.start()
        assert first.wait_connected(10), "ingest worker did not connect"
        first.stop()  # DISCONNECT follows the SUBSCRIBE on the same connection: the broker keeps both
        sync["ready"].set()
        sync["go"].wait()
        worker = IngestWorker(config, db, IngestStats())
        cpu0, started = time.process_time(), time.time()
        worker.start()
        while not sync["stop"].wait(0.005):
            sync["done"].value = worker.stats.stored
        cpu = time.process_time() - cpu0
        worker.stop()
        last = worker.stats.last_commit_at
        detail = {"stats": worker.stats.snapshot(), "lags": lag_count(worker.stats)}
        return Report(started, last.timestamp() if last else started, cpu, detail)
    finally:
        db.dispose()


def drain(consumers: Sequence[Consumer], backlog: Backlog) -> list[Report]:
    """Start ``consumers`` (each a process), publish ``backlog`` once they are ready, let them drain
    it together and collect their reports."""
    ctx = multiprocessing.get_context("spawn")
    ready = [ctx.Event() for _ in consumers]
    go, stop, reports = ctx.Event(), ctx.Event(), ctx.Queue()
    done = [ctx.Value("q", 0, lock=False) for _ in consumers]
    procs = [
        ctx.Process(
            target=consume,
            args=(c, backlog.total, {"ready": r, "go": go, "stop": stop, "done": d, "reports": reports}),
            daemon=True,
        )
        for c, r, d in zip(consumers, ready, done, strict=True)
    ]
    for p in procs:
        p.start()
    try:
        for r in ready:
            assert r.wait(120), "a consumer process did not get ready"
        _fail_on_error(procs, reports)
        publish_backlog(consumers[0].port, backlog)
        go.set()
        last, since = -1, time.monotonic()
        while (n := sum(d.value for d in done)) < backlog.total:
            if n != last:
                last, since = n, time.monotonic()
            assert time.monotonic() - since < STALL_S, f"the consumers stalled at {n} of {backlog.total}"
            _fail_on_error(procs, reports)
            time.sleep(0.005)
        stop.set()
        out = [reports.get(timeout=120) for _ in procs]
    finally:
        stop.set()
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    failures = [r for r in out if isinstance(r, str)]
    assert not failures, failures[0]
    return out


def _fail_on_error(procs: Sequence[Any], reports: Any) -> None:
    """Fail with a consumer's traceback as soon as one process has ended early."""
    if all(p.is_alive() for p in procs):
        return
    try:
        report = reports.get(timeout=5)
    except queue.Empty:
        report = "a consumer process died without a report"
    pytest.fail(report if isinstance(report, str) else "a consumer process ended early")


def elapsed(reports: Sequence[Report]) -> float:
    return max(r.finished for r in reports) - min(r.started for r in reports)


def rows_of(db: Database, agents: Sequence[str]) -> tuple[int, int]:
    """(rows, distinct result ids) stored for ``agents``."""
    with db.session() as s:
        where = Classification.agent_id.in_(list(agents))
        rows = s.scalar(select(func.count()).select_from(Classification).where(where))
        distinct = s.scalar(select(func.count(func.distinct(Classification.result_id))).where(where))
    return int(rows or 0), int(distinct or 0)


def lag_count(stats: IngestStats) -> float:
    """How many lags ``stats`` observed (the histogram's count)."""
    for metric in stats.lag_seconds.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    return 0.0


def cpu_per_message(reports: Sequence[Report], n: int) -> str:
    return f"{sum(r.cpu_s for r in reports) / n * 1e6:.0f} us CPU per message"


def test_ingest_throughput(tmp_path, postgres_url):
    broker = start_bench_broker(tmp_path / "broker")
    run = uuid.uuid4().hex[:6]
    one_backlog, two_backlog = make_backlog(f"b1-{run}", MESSAGES), make_backlog(f"b2-{run}", MESSAGES)
    paho_backlog = make_backlog(f"bp-{run}", MESSAGES)
    db = prepare_database(postgres_url, [*one_backlog.agents, *two_backlog.agents])
    port, group = broker.port, f"bench{run}"
    try:
        paho = drain([Consumer("paho", port, f"bench-paho-{run}", tmp_path / "paho")], paho_backlog)
        got = paho[0].detail
        print(
            f"\nbench: paho got {got['messages']} messages ({got['distinct']} distinct) of {MESSAGES}; "
            f"{cpu_per_message(paho, MESSAGES)}"
        )
        assert got["messages"] == got["distinct"] == MESSAGES

        one = drain([Consumer("hub", port, f"hub-bench-{run}", tmp_path / "one", postgres_url)], one_backlog)
        rows, distinct = rows_of(db, one_backlog.agents)
        snap = one[0].detail["stats"]
        print(
            f"bench: 1 worker stored {rows} rows ({distinct} distinct result ids) of {MESSAGES}; "
            f"{snap['batches']} batches, duplicates {snap['duplicates']}, invalid {snap['invalid']}, "
            f"lags observed {one[0].detail['lags']:.0f}; {cpu_per_message(one, MESSAGES)}"
        )
        assert rows == distinct == MESSAGES

        pair = [
            Consumer("hub", port, f"hub-bench-{run}-{i}", tmp_path / f"two{i}", postgres_url, group)
            for i in range(2)
        ]
        two = drain(pair, two_backlog)
        rows2, distinct2 = rows_of(db, two_backlog.agents)
        split = [r.detail["stats"]["stored"] for r in two]
        print(
            f"bench: 2 workers stored {rows2} rows ({distinct2} distinct result ids) of {MESSAGES}; "
            f"split {split}; {cpu_per_message(two, MESSAGES)}"
        )
        assert rows2 == distinct2 == MESSAGES

        paho_rate, one_rate, two_rate = (MESSAGES / elapsed(r) for r in (paho, one, two))
        print(
            f"bench: {MESSAGES} messages, {PUBLISHERS} publishers, broker max_inflight_messages {INFLIGHT}, "
            f"ingest.batch_size {bench_config(tmp_path, postgres_url, port).ingest.batch_size}, "
            f"gc {'tuned (hub.ingest.tune_gc)' if TUNE_GC else 'CPython defaults'}"
        )
        print(f"BENCH paho_subscriber_msgs_per_s {paho_rate:.0f} msg/s")
        print(f"BENCH hub_ingest_rows_per_s {one_rate:.0f} rows/s")
        print(f"BENCH hub_ingest_vs_paho_ratio {one_rate / paho_rate:.3f} ratio")
        print(f"BENCH hub_ingest_2_workers_rows_per_s {two_rate:.0f} rows/s")
    finally:
        db.dispose()
        broker.stop()
