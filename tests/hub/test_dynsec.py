"""hub.broker.dynsec against a real Mosquitto 2.0.11 with the dynamic security plugin (our own broker).

Besides the account manager's contract (idempotent, read before write, never touches an account
that is not an agent's, clear errors), two cases pin the broker behaviour the module's docstring
relies on: disabling a client or changing its password disconnects it at once, and ``%c`` is not
substituted in dynsec ACLs (hence one role per agent).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hub.broker.control import CONTROL_TOPIC, RESPONSE_TOPIC
from hub.broker.dynsec import (
    BrokerAccountsError,
    DynSecAccounts,
    UnenforcedAccounts,
    agent_acls,
    agent_role,
    check_agent_id,
    hub_acls,
)
from hub.broker.dynsec_config import HUB_USERNAME
from hub.broker.embedded import MosquittoBroker, find_mosquitto
from shared import topics
from shared.mqtt import MqttSettings
from tests.conftest import Broker, free_port, wait_until
from tests.hub.mqtt_peers import PEER_WAIT_S, Peer


def admin_request(broker: MosquittoBroker, command: dict[str, Any]) -> dict[str, Any]:
    """One dynsec command sent by hand as the admin: what an operator could do with mosquitto_ctrl."""
    peer = Peer(broker.port, broker.hub_username, broker.hub_password, f"test-admin-{uuid.uuid4().hex[:6]}")
    try:
        assert peer.subscribe(RESPONSE_TOPIC)
        peer.publish(CONTROL_TOPIC, json.dumps({"commands": [command]}).encode())
        payload = wait_until(lambda: peer.payloads(RESPONSE_TOPIC), PEER_WAIT_S, what="dynsec answer")[0]
        answer: dict[str, Any] = json.loads(payload)["responses"][0]
        return answer
    finally:
        peer.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    exe = find_mosquitto()
    if exe is None:
        pytest.fail(
            "mosquitto is not installed: run `./services.sh demo` as root or apt-get install mosquitto"
        )
    b = MosquittoBroker(exe, free_port(), tmp_path_factory.mktemp("dynsec"), 100_000)
    yield b
    b.stop()


@pytest.fixture
def accounts(broker: MosquittoBroker) -> Iterator[DynSecAccounts]:
    a = DynSecAccounts(broker.settings, client_id=f"leukonet-hub-dynsec-{uuid.uuid4().hex[:6]}", timeout_s=5)
    yield a
    a.close()


def agent_id() -> str:
    return f"scope-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize(
    "bad", ["leukonet-hub", "leukonet-hub-ingest", "Leukonet-Hub-x", "a/b", "+", "#", ""]
)
def test_reserved_and_malformed_agent_ids_are_refused_before_the_broker_is_asked(bad):
    closed = DynSecAccounts(MqttSettings(port=free_port()), timeout_s=0.5)  # nothing listens there
    with pytest.raises(ValueError):
        check_agent_id(bad)
    with pytest.raises(ValueError):
        closed.add_agent(bad, "a-password")
    with pytest.raises(ValueError):
        closed.remove_agent(bad)
    with pytest.raises(ValueError):
        UnenforcedAccounts().add_agent(bad, "a-password")


def test_roles_are_the_topic_grammar():
    own = {k: topics.build("a1", k) for k in topics.Kind}
    assert sorted(agent_acls("a1")) == sorted(
        [("publishClientSend", own[k]) for k in topics.AGENT_KINDS]
        + [("subscribeLiteral", own[topics.Kind.DESIRED]), ("publishClientReceive", own[topics.Kind.DESIRED])]
    )
    hub = hub_acls()
    assert ("publishClientSend", "leukonet/v1/agents/+/desired") in hub
    assert ("subscribePattern", "$share/+/leukonet/v1/agents/+/results") in hub
    assert not any(t == "publishClientSend" and not topic.endswith("/desired") for t, topic in hub)


def test_ensure_hub_role_again_changes_nothing_and_kicks_no_one(broker, accounts):
    hub = Peer(
        broker.port, broker.hub_username, broker.hub_password, f"leukonet-hub-ingest-{uuid.uuid4().hex[:4]}"
    )
    try:
        assert hub.accepted
        accounts.ensure_hub_role(HUB_USERNAME)
        accounts.ensure_hub_role(HUB_USERNAME)
        assert hub.subscribe(
            topics.subscription(topics.Kind.RESULTS, "hubtest")
        )  # round trip after the calls
        assert not hub.dropped.is_set()
    finally:
        hub.close()


def test_widened_roles_and_default_access_are_put_back(broker, accounts):
    a = agent_id()
    accounts.add_agent(a, "pw-0123456789")
    wide = {"acltype": "publishClientSend", "topic": "leukonet/v1/agents/+/results", "allow": True}
    assert "error" not in admin_request(broker, {"command": "addRoleACL", "rolename": agent_role(a), **wide})
    opened = [{"acltype": "publishClientSend", "allow": True}, {"acltype": "subscribe", "allow": True}]
    assert "error" not in admin_request(broker, {"command": "setDefaultACLAccess", "acls": opened})
    accounts.add_agent(a, "pw-0123456789")
    accounts.ensure_hub_role(HUB_USERNAME)
    role = admin_request(broker, {"command": "getRole", "rolename": agent_role(a)})["data"]["role"]
    assert sorted((x["acltype"], x["topic"]) for x in role["acls"]) == sorted(agent_acls(a))
    default = admin_request(broker, {"command": "getDefaultACLAccess"})["data"]["acls"]
    assert {x["acltype"]: x["allow"] for x in default}["publishClientSend"] is False
    assert {x["acltype"]: x["allow"] for x in default}["subscribe"] is False


def test_accounts_that_are_not_agents_are_never_touched(broker, accounts):
    ops = f"ops-{uuid.uuid4().hex[:6]}"
    created = admin_request(
        broker,
        {"command": "createClient", "username": ops, "password": "ops-pw", "roles": [{"rolename": "admin"}]},
    )
    assert "error" not in created
    with pytest.raises(ValueError, match="not a leukonet agent"):
        accounts.add_agent(ops, "another-password")
    with pytest.raises(ValueError, match="not a leukonet agent"):
        accounts.set_password(ops, "another-password")
    with pytest.raises(ValueError, match="not a leukonet agent"):
        accounts.remove_agent(ops)
    assert ops not in accounts.agents()
    still = Peer(broker.port, ops, "ops-pw", f"ops-{uuid.uuid4().hex[:4]}")
    try:
        assert still.accepted, "the operator's account was changed"
    finally:
        still.close()


def test_remove_agent_is_idempotent_and_agents_lists_only_agents(accounts):
    a = agent_id()
    accounts.add_agent(a, "pw-0123456789")
    assert a in accounts.agents() and HUB_USERNAME not in accounts.agents()
    accounts.remove_agent(a)
    accounts.remove_agent(a)
    assert a not in accounts.agents()
    with pytest.raises(BrokerAccountsError, match="enroll it again"):
        accounts.set_password(a, "pw-new-0123456")


def test_a_wrong_admin_login_is_a_clear_error(broker):
    wrong = MqttSettings(
        host="127.0.0.1", port=broker.port, username=HUB_USERNAME, password="not-the-password"
    )
    accounts = DynSecAccounts(wrong, timeout_s=1.5)
    with pytest.raises(BrokerAccountsError, match=r"refused the login.*dynamic-security admin"):
        accounts.agents()
    accounts.close()


def test_a_broker_without_the_plugin_is_a_clear_error(private_broker: Broker):
    accounts = DynSecAccounts(MqttSettings(host="127.0.0.1", port=private_broker.port), timeout_s=1.0)
    with pytest.raises(BrokerAccountsError, match="loads the plugin"):
        accounts.agents()
    accounts.close()


def test_mosquitto_disconnects_a_client_when_disabled_or_its_password_changes(broker, accounts):
    a = agent_id()
    accounts.add_agent(a, "pw-first-0123")
    peer = Peer(broker.port, a, "pw-first-0123", a)
    try:
        assert peer.accepted
        assert "error" not in admin_request(broker, {"command": "disableClient", "username": a})
        assert peer.dropped.wait(3), "disableClient did not disconnect the client"
    finally:
        peer.close()
    accounts.add_agent(a, "pw-second-0123")  # enables it again, with a new password
    peer = Peer(broker.port, a, "pw-second-0123", a)
    try:
        assert peer.accepted
        accounts.set_password(a, "pw-third-01234")
        assert peer.dropped.wait(3), "setClientPassword did not disconnect the client"
    finally:
        peer.close()


def test_percent_c_is_literal_in_dynsec_acls(broker, accounts):
    a = agent_id()
    accounts.add_agent(a, "pw-0123456789")
    acl = {"acltype": "subscribePattern", "topic": "pc/%c/#", "allow": True}
    assert "error" not in admin_request(broker, {"command": "addRoleACL", "rolename": agent_role(a), **acl})
    peer = Peer(broker.port, a, "pw-0123456789", a)
    try:
        assert peer.accepted
        assert not peer.subscribe(f"pc/{a}/#"), "dynsec substituted %c: per-agent roles could be one pattern"
        assert peer.subscribe("pc/%c/#")
    finally:
        peer.close()
        accounts.remove_agent(a)


def test_unenforced_accounts_do_nothing_and_warn_once(caplog):
    accounts = UnenforcedAccounts("amqtt demo broker")
    with caplog.at_level(logging.WARNING, logger="hub.broker.dynsec"):
        accounts.ensure_hub_role("hub")
        accounts.add_agent("a1", "pw")
        accounts.set_password("a1", "pw2")
        accounts.remove_agent("a1")
        assert accounts.agents() == []
        accounts.close()
    warnings = [r for r in caplog.records if "broker_identities_not_enforced" in r.getMessage()]
    assert len(warnings) == 1 and "amqtt demo broker" in warnings[0].getMessage()
    assert accounts.enforced is False and DynSecAccounts.enforced is True


def test_state_dir_is_private(broker):
    state = Path(broker.config_path).parent
    assert state.stat().st_mode & 0o777 == 0o700
    for name in ("hub-password", "dynamic-security.json"):
        assert (state / name).stat().st_mode & 0o777 == 0o600, name
