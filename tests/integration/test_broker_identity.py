"""The broker enforces the topic grammar per identity: a real Mosquitto with dynamic security.

The hub (as the dynsec admin, through :class:`hub.broker.dynsec.DynSecAccounts`) gives two agents,
lab1-scope1 and lab2-scope1, their own accounts; lab2 then tries everything a compromised agent
would. Every "not delivered" is proven against a sentinel: the same subscriber receives a genuine
message sent after the forged one on the same path, so a broker that let the forgery through would
have delivered it first (one broker, one connection, in order). The last case runs the hub's real
ingest worker and checks that a forged result is never stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from hub.broker.dynsec import DynSecAccounts
from hub.broker.dynsec_config import HUB_USERNAME
from hub.broker.embedded import MosquittoBroker, find_mosquitto
from hub.db.migrate import upgrade
from hub.db.models import Classification
from hub.db.session import Database
from hub.ingest import IngestStats, IngestWorker
from shared import topics
from shared.topics import Kind
from tests.conftest import free_port, wait_until
from tests.hub.conftest import as_json, hub_config, make_result
from tests.hub.mqtt_peers import Peer

pytestmark = pytest.mark.integration

LAB1, LAB2 = "lab1-scope1", "lab2-scope1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    exe = find_mosquitto()
    if exe is None:
        pytest.fail("mosquitto is not installed: run `make test` (services.sh) or apt-get install mosquitto")
    b = MosquittoBroker(exe, free_port(), tmp_path_factory.mktemp("identity"), 100_000)
    yield b
    b.stop()


@pytest.fixture
def accounts(broker: MosquittoBroker) -> Iterator[DynSecAccounts]:
    a = DynSecAccounts(broker.settings, timeout_s=5)
    yield a
    a.close()


@pytest.fixture
def passwords(accounts: DynSecAccounts) -> dict[str, str]:
    """Both agents exist with fresh passwords at the start of every test (add_agent resets them)."""
    pw = {LAB1: f"lab1-{uuid.uuid4().hex}", LAB2: f"lab2-{uuid.uuid4().hex}"}
    for agent, password in pw.items():
        accounts.add_agent(agent, password)
    return pw


@pytest.fixture
def peers(broker: MosquittoBroker) -> Iterator[list[Peer]]:
    """Every peer a test opens, closed at its end."""
    opened: list[Peer] = []
    yield opened
    for p in opened:
        p.close()


def connect(broker: MosquittoBroker, peers: list[Peer], user: str | None, pw: str | None, cid: str) -> Peer:
    peer = Peer(broker.port, user, pw, cid)
    peers.append(peer)
    return peer


def hub(broker: MosquittoBroker, peers: list[Peer], cid: str | None = None) -> Peer:
    peer = connect(
        broker, peers, HUB_USERNAME, broker.hub_password, cid or f"leukonet-hub-t-{uuid.uuid4().hex[:6]}"
    )
    assert peer.accepted, peer.connack
    return peer


def test_anonymous_and_wrong_password_are_refused(broker, passwords, peers):
    assert not connect(broker, peers, None, None, "anonymous-1").accepted
    assert not connect(broker, peers, LAB1, "wrong-password", LAB1).accepted
    assert connect(broker, peers, LAB1, passwords[LAB1], LAB1).accepted  # the refusals can fail


def test_an_agent_cannot_report_as_another(broker, passwords, peers):
    watcher = hub(broker, peers)
    for kind in topics.AGENT_KINDS:
        assert watcher.subscribe(topics.subscription(kind))
    assert hub(broker, peers).subscribe(topics.subscription(Kind.RESULTS, "identity"))  # the $share form
    lab1 = connect(broker, peers, LAB1, passwords[LAB1], LAB1)
    lab2 = connect(broker, peers, LAB2, passwords[LAB2], LAB2)
    assert lab1.accepted and lab2.accepted
    for kind in topics.AGENT_KINDS:
        topic = topics.build(LAB1, kind)
        lab2.publish(topic, b"forged", retain=kind is Kind.STATUS)
        lab1.publish(topic, b"genuine", retain=kind is Kind.STATUS)
        wait_until(lambda t=topic: watcher.payloads(t), 5, what=f"lab1's own {kind.value}")
        assert watcher.payloads(topic) == [b"genuine"], f"lab2's forgery on {topic} was delivered"


def test_an_agent_reads_only_its_own_desired(broker, passwords, peers):
    lab2 = connect(broker, peers, LAB2, passwords[LAB2], LAB2)
    assert not lab2.subscribe("#")
    assert not lab2.subscribe(topics.subscription(Kind.RESULTS))
    assert not lab2.subscribe(topics.build(LAB1, Kind.DESIRED))
    own = topics.build(LAB2, Kind.DESIRED)
    assert lab2.subscribe(own)
    lab1 = connect(broker, peers, LAB1, passwords[LAB1], LAB1)
    lab1.publish(topics.build(LAB1, Kind.RESULTS), b"lab1 result")
    publisher = hub(broker, peers)
    publisher.publish(topics.build(LAB1, Kind.DESIRED), b"desired for lab1")
    publisher.publish(own, b"desired for lab2")
    wait_until(lambda: lab2.payloads(own), 5, what="lab2's own desired")
    assert lab2.payloads() == [b"desired for lab2"]


def test_an_agent_cannot_publish_any_desired(broker, passwords, peers):
    lab2 = connect(broker, peers, LAB2, passwords[LAB2], LAB2)
    watcher = hub(broker, peers)
    assert watcher.subscribe(topics.subscription(Kind.DESIRED))
    mine, theirs = topics.build(LAB2, Kind.DESIRED), topics.build(LAB1, Kind.DESIRED)
    publisher = hub(broker, peers)
    try:
        for topic in (mine, theirs):
            lab2.publish(topic, b"forged desired", retain=True)
        publisher.publish(theirs, b"sentinel")  # not retained: only live subscribers see it
        wait_until(lambda: watcher.payloads(theirs), 5, what="the hub's sentinel desired")
        assert watcher.payloads() == [b"sentinel"], "lab2's desired was delivered"
        late = hub(broker, peers)
        assert late.subscribe(mine) and late.subscribe(theirs)
        publisher.publish(theirs, b"sentinel 2")
        wait_until(lambda: late.payloads(theirs), 5, what="the second sentinel")
        assert late.payloads() == [b"sentinel 2"], "lab2 left a retained desired"
    finally:
        for topic in (mine, theirs):  # a broker that stored one must not leak it into other tests
            publisher.publish(topic, b"", retain=True)


def test_an_agent_cannot_take_another_client_id(broker, passwords, peers):
    ingest = hub(broker, peers, cid="leukonet-hub-ingest")
    for cid in ("leukonet-hub-ingest", LAB1, "anything-else"):
        assert not connect(broker, peers, LAB2, passwords[LAB2], cid).accepted, cid
    assert ingest.subscribe(topics.subscription(Kind.STATUS))  # a round trip after the attempts
    assert not ingest.dropped.is_set(), "lab2 took over the hub's session"
    assert connect(broker, peers, LAB2, passwords[LAB2], LAB2).accepted


def test_removing_an_agent_disconnects_it_at_once_and_for_good(broker, accounts, passwords, peers):
    lab2 = connect(broker, peers, LAB2, passwords[LAB2], LAB2)
    assert lab2.accepted
    accounts.remove_agent(LAB2)
    assert lab2.dropped.wait(3), "remove_agent left lab2 connected"
    assert not connect(broker, peers, LAB2, passwords[LAB2], LAB2).accepted
    assert LAB2 not in accounts.agents() and LAB1 in accounts.agents()


def test_set_password_rotates(broker, accounts, passwords, peers):
    new = f"lab1-new-{uuid.uuid4().hex}"
    accounts.set_password(LAB1, new)
    assert not connect(broker, peers, LAB1, passwords[LAB1], LAB1).accepted
    assert connect(broker, peers, LAB1, new, LAB1).accepted


def test_ingest_never_stores_a_forged_result(tmp_path: Path, broker, passwords, peers):
    cfg = hub_config(
        tmp_path,
        None,
        mqtt={
            "host": "127.0.0.1",
            "port": broker.port,
            "username": HUB_USERNAME,
            "password": broker.hub_password,
            "client_id": f"leukonet-hub-ingest-{uuid.uuid4().hex[:6]}",
        },
        ingest={"auto_register_agents": True},  # only the broker stands between lab2 and the table
    )
    db = Database(cfg.db_url)
    upgrade(db)
    worker = IngestWorker(cfg, db, IngestStats())
    worker.start()
    try:
        assert worker.wait_connected(10)
        lab1 = connect(broker, peers, LAB1, passwords[LAB1], LAB1)
        lab2 = connect(broker, peers, LAB2, passwords[LAB2], LAB2)
        forged, genuine = make_result(agent_id=LAB1, label="ALL"), make_result(agent_id=LAB1, label="normal")
        topic = topics.build(LAB1, Kind.RESULTS)
        lab2.publish(topic, as_json(forged))
        lab1.publish(topic, as_json(genuine))

        def stored(result_id: uuid.UUID) -> bool:
            with db.session() as s:
                return (
                    s.scalar(select(Classification).where(Classification.result_id == result_id)) is not None
                )

        wait_until(lambda: stored(genuine.result_id), 10, what="the genuine result in the database")
        assert not stored(forged.result_id), "a result lab2 forged for lab1 was stored"
        assert worker.stats.snapshot()["stored"] == 1
    finally:
        worker.stop()
        db.dispose()
