"""Per-agent broker accounts, managed through Mosquitto's dynamic security plugin.

Why: with one shared MQTT login any agent could publish another agent's results or a forged
``desired`` state, and read every lab's traffic. With dynamic security each agent has its own
account (user name = agent id, client id pinned to it) and a role of its own that allows exactly
the topic grammar of :mod:`shared.topics`: publish its ``results`` / ``status`` / ``events``,
subscribe to and receive its ``desired``. The hub's user gets the role ``leukonet-hub``: publish
every ``desired``, subscribe to and receive every agent's reports, also as ``$share/<group>/...``.
Everything else is refused by the plugin's default ACL access (publish and subscribe: deny).

The hub is the plugin's admin: :class:`DynSecAccounts` sends its commands one request at a time
(a lock) over :class:`hub.broker.control.ControlChannel`, which connects lazily, reconnects (paho)
and waits a bounded time for each answer. :class:`UnenforcedAccounts` is the stand-in for brokers
without the plugin (the anonymous amqtt demo broker, a test broker): it does nothing and says so
once at WARNING.

Mosquitto 2.0.11 behaviour this module relies on (checked on a real broker; the cases are in
``tests/hub/test_dynsec.py`` and ``tests/integration/test_broker_identity.py``):

* ``deleteClient``, ``disableClient`` and ``setClientPassword`` disconnect every connection of that
  user at once, so revoking or rotating an agent takes effect immediately. So do ``setClientId``
  and ``addClientRole`` (for that user) and ``addRoleACL`` (for every holder of the role), which
  is why this module reads before it writes: a repeated :meth:`DynSecAccounts.ensure_hub_role`
  kicks no one. ``removeRoleACL`` does *not* disconnect: subscriptions made under a removed ACL
  live on until the client reconnects, so :meth:`DynSecAccounts.add_agent`, which corrects a
  widened agent role, always resets the password too (and thereby disconnects the agent).
* Giving the role to the hub's own user also kicks this control connection, before the answer is
  sent: that one step is confirmed by reading the account back after reconnecting.
* A client id pinned to an account is checked with the password, before Mosquitto's session
  takeover: an agent presenting the hub's client id is refused and the hub's session stays.
* ACL topics are literal: ``%c`` / ``%u`` are not substituted (a ``subscribePattern`` of
  ``x/%c/#`` only matches the literal filter ``x/%c/#``), hence one role per agent.
* Shared subscriptions are checked with their ``$share/<group>/`` prefix, hence the extra
  ``$share/+/...`` patterns in the hub role.
* ``addClientRole`` for a role the client already holds answers "Internal error"; ``addRoleACL``
  for an existing (type, topic) answers "ACL with this topic already exists" (we read first).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

# BrokerAccountsError is defined next to the channel that raises it; callers import it from here
from hub.broker.control import BrokerAccountsError, ControlChannel
from shared import topics
from shared.logs import kv
from shared.mqtt import MqttSettings

log = logging.getLogger(__name__)

HUB_ROLE = "leukonet-hub"
AGENT_ROLE_PREFIX = "leukonet-agent-"
#: the hub's user name and MQTT client ids start with it, so no agent account may
RESERVED_PREFIX = "leukonet-hub"

Acl = tuple[str, str]  # (acltype, topic); every ACL this module writes allows


class BrokerAccounts(Protocol):
    """Broker accounts of agents and the hub's broker role (see the module docstring)."""

    enforced: bool  # True when the broker really enforces per-agent identities

    def ensure_hub_role(self, hub_username: str) -> None: ...
    def add_agent(self, agent_id: str, password: str) -> None: ...
    def set_password(self, agent_id: str, password: str) -> None: ...
    def remove_agent(self, agent_id: str) -> None: ...
    def agents(self) -> list[str]: ...
    def close(self) -> None: ...


def agent_role(agent_id: str) -> str:
    """The name of the role that holds ``agent_id``'s ACLs."""
    return f"{AGENT_ROLE_PREFIX}{agent_id}"


def hub_acls() -> list[Acl]:
    """The hub role: publish any agent's desired; subscribe to and receive every agent's reports."""
    acls: list[Acl] = [("publishClientSend", topics.subscription(topics.Kind.DESIRED))]
    for kind in topics.AGENT_KINDS:
        plain = topics.subscription(kind)
        acls += [
            ("subscribePattern", plain),
            ("subscribePattern", topics.subscription(kind, "+")),  # $share/<any group>/...
            ("publishClientReceive", plain),
        ]
    return acls


def agent_acls(agent_id: str) -> list[Acl]:
    """One agent's role: its own results/status/events out, its own desired in, nothing else."""
    desired = topics.build(agent_id, topics.Kind.DESIRED)
    acls: list[Acl] = [("publishClientSend", topics.build(agent_id, kind)) for kind in topics.AGENT_KINDS]
    return [*acls, ("subscribeLiteral", desired), ("publishClientReceive", desired)]


def check_agent_id(agent_id: str) -> str:
    """``agent_id`` if it may own a broker account, else :class:`ValueError` saying why."""
    topics.validate_agent_id(agent_id)  # TopicError is a ValueError
    if agent_id.lower().startswith(RESERVED_PREFIX):
        raise ValueError(
            f"agent id {agent_id!r} starts with {RESERVED_PREFIX!r}, which is reserved for the hub's "
            "own MQTT user and client ids; choose another agent id"
        )
    return agent_id


def _check_credentials(agent_id: str, password: str) -> None:
    check_agent_id(agent_id)
    if not password:
        raise ValueError(f"the broker password of agent {agent_id!r} is empty")


def _cmd(command: str, **fields: Any) -> dict[str, Any]:
    return {"command": command, **fields}


def _role_names(client: dict[str, Any]) -> set[str]:
    return {str(r.get("rolename")) for r in client.get("roles", [])}


class DynSecAccounts:
    """Accounts on a Mosquitto with the dynamic security plugin, as its admin user.

    Args:
        settings: how to reach the broker; ``username`` / ``password`` must be a dynsec admin
            (the ``admin`` role that ``mosquitto_ctrl dynsec init`` creates).
        client_id: this control connection's client id (not a session the hub relies on).
        timeout_s: longest wait for the connection and for each answer.
    """

    enforced = True

    def __init__(
        self, settings: MqttSettings, client_id: str = "leukonet-hub-dynsec", timeout_s: float = 10.0
    ) -> None:
        self._settings = settings
        self._lock = threading.RLock()  # one request at a time, and each read-then-write as a whole
        self._control = ControlChannel(settings, client_id, timeout_s)

    # --- public interface -----------------------------------------------------------------------
    def ensure_hub_role(self, hub_username: str) -> None:
        """Give ``hub_username`` the role ``leukonet-hub`` (created or corrected), keep default deny.

        Raises:
            BrokerAccountsError: the broker has no such user, or cannot be reached / refuses.
        """
        with self._lock:
            self._ensure_default_deny()
            self._ensure_role(HUB_ROLE, hub_acls())
            client = self._get_client(hub_username)
            if client is None:
                raise BrokerAccountsError(
                    f"the broker at {self._control.where} has no dynamic-security user {hub_username!r}; "
                    "create it (mosquitto_ctrl dynsec createClient) or set mqtt.username to the hub's "
                    "admin user"
                )
            if HUB_ROLE in _role_names(client):
                return
            own = hub_username == self._settings.username
            self._control.call(
                [_cmd("addClientRole", username=hub_username, rolename=HUB_ROLE)], kicks_self=own
            )
            client = self._get_client(hub_username)
            if client is None or HUB_ROLE not in _role_names(client):
                raise BrokerAccountsError(
                    f"the broker at {self._control.where} did not give role {HUB_ROLE!r} to "
                    f"{hub_username!r}; see the broker's log"
                )
            log.info(kv("broker_hub_role_added", user=hub_username, role=HUB_ROLE))

    def add_agent(self, agent_id: str, password: str) -> None:
        """Create (or reset) ``agent_id``'s account: its password, pinned client id and own role.

        Raises:
            ValueError: ``agent_id`` is not a valid agent id, is reserved for the hub, or names a
                broker account that is not an agent's; or the password is empty.
            BrokerAccountsError: the broker cannot be reached or refuses.
        """
        _check_credentials(agent_id, password)
        role = agent_role(agent_id)
        with self._lock:
            self._ensure_role(role, agent_acls(agent_id))
            client = self._get_client(agent_id)
            if client is None:
                roles = [{"rolename": role}]
                self._control.run(
                    _cmd("createClient", username=agent_id, password=password, clientid=agent_id, roles=roles)
                )
                log.info(kv("broker_agent_added", agent_id=agent_id, role=role))
                return
            self._refuse_foreign(client, agent_id)
            commands = [_cmd("setClientPassword", username=agent_id, password=password)]
            if client.get("clientid") != agent_id:
                commands.append(_cmd("setClientId", username=agent_id, clientid=agent_id))
            if role not in _role_names(client):
                commands.append(_cmd("addClientRole", username=agent_id, rolename=role))
            if client.get("disabled"):
                commands.append(_cmd("enableClient", username=agent_id))
            self._control.run(*commands)
            log.info(kv("broker_agent_reset", agent_id=agent_id, changes=len(commands)))

    def set_password(self, agent_id: str, password: str) -> None:
        """Rotate ``agent_id``'s password; the broker disconnects its current connection.

        Raises:
            ValueError: as :meth:`add_agent`.
            BrokerAccountsError: the agent has no account (enroll it again), or the broker fails.
        """
        _check_credentials(agent_id, password)
        with self._lock:
            client = self._get_client(agent_id)
            if client is None:
                raise BrokerAccountsError(
                    f"agent {agent_id!r} has no account on the broker at {self._control.where}; "
                    "enroll it again"
                )
            self._refuse_foreign(client, agent_id)
            self._control.run(_cmd("setClientPassword", username=agent_id, password=password))
            log.info(kv("broker_agent_password_set", agent_id=agent_id))

    def remove_agent(self, agent_id: str) -> None:
        """Delete ``agent_id``'s account and role; the broker disconnects it at once. Idempotent.

        Raises:
            ValueError: as :meth:`add_agent` (an account that is not an agent's is never deleted).
            BrokerAccountsError: the broker cannot be reached or refuses.
        """
        check_agent_id(agent_id)
        with self._lock:
            client = self._get_client(agent_id)
            if client is not None:
                self._refuse_foreign(client, agent_id)
                self._control.run(_cmd("deleteClient", username=agent_id))
            self._control.run(_cmd("deleteRole", rolename=agent_role(agent_id)), ok_errors={"Role not found"})
            log.info(kv("broker_agent_removed", agent_id=agent_id, had_account=client is not None))

    def agents(self) -> list[str]:
        """User names of the agent accounts (those holding a ``leukonet-agent-*`` role), sorted."""
        with self._lock:
            data = self._control.run(_cmd("listClients", verbose=True, count=-1))[0]
        clients = data.get("clients", [])
        agent_roles = (c for c in clients if any(r.startswith(AGENT_ROLE_PREFIX) for r in _role_names(c)))
        return sorted(str(c["username"]) for c in agent_roles)

    def close(self) -> None:
        """Disconnect; a later call connects again."""
        with self._lock:
            self._control.close()

    # --- account helpers ------------------------------------------------------------------------
    def _refuse_foreign(self, client: dict[str, Any], agent_id: str) -> None:
        # an agent id that names the hub's (or an operator's) account must never reset or delete it
        foreign = _role_names(client) - {agent_role(agent_id)}
        if foreign or client.get("groups"):
            raise ValueError(
                f"the broker account {agent_id!r} exists and is not a leukonet agent's (roles: "
                f"{', '.join(sorted(foreign)) or '-'}); choose another agent id"
            )

    def _get_client(self, username: str) -> dict[str, Any] | None:
        data = self._control.run(_cmd("getClient", username=username), ok_errors={"Client not found"})[0]
        client = data.get("client")
        return client if isinstance(client, dict) else None

    def _ensure_role(self, rolename: str, acls: list[Acl]) -> None:
        """Create ``rolename`` with exactly ``acls``, or correct an existing role to exactly them."""
        data = self._control.run(_cmd("getRole", rolename=rolename), ok_errors={"Role not found"})[0]
        role = data.get("role")
        if not isinstance(role, dict):
            wanted = [{"acltype": t, "topic": topic, "allow": True} for t, topic in acls]
            self._control.run(_cmd("createRole", rolename=rolename, acls=wanted))
            return
        # allowed ACLs we wrote stay; a deny or an ACL we did not write would widen or break the grammar
        have = {(str(a["acltype"]), str(a["topic"])): bool(a.get("allow")) for a in role.get("acls", [])}
        commands = [
            _cmd("removeRoleACL", rolename=rolename, acltype=t, topic=topic)
            for (t, topic), allow in have.items()
            if (t, topic) not in acls or not allow
        ]
        commands += [
            _cmd("addRoleACL", rolename=rolename, acltype=t, topic=topic, allow=True)
            for t, topic in acls
            if not have.get((t, topic))
        ]
        if commands:
            self._control.run(*commands)
            log.warning(kv("broker_role_corrected", role=rolename, changes=len(commands)))

    def _ensure_default_deny(self) -> None:
        data = self._control.run(_cmd("getDefaultACLAccess"))[0]
        allowed = {str(a["acltype"]) for a in data.get("acls", []) if a.get("allow")}
        opened = sorted(allowed & {"publishClientSend", "subscribe"})
        if opened:
            self._control.run(
                _cmd("setDefaultACLAccess", acls=[{"acltype": t, "allow": False} for t in opened])
            )
            log.warning(kv("broker_default_acl_closed", was_allowed=",".join(opened)))


class UnenforcedAccounts:
    """Accounts on a broker that does not enforce identities: every method does nothing.

    For the anonymous amqtt demo broker and test brokers. The first call logs once at WARNING that
    any client may publish as any agent there. Agent ids are still checked as :class:`DynSecAccounts`
    checks them, so the hub behaves the same on either.
    """

    enforced = False

    def __init__(self, reason: str = "the broker has no dynamic security plugin") -> None:
        self.reason = reason
        self._warned = False
        self._lock = threading.Lock()

    def _warn_once(self) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        log.warning(
            kv(
                "broker_identities_not_enforced",
                reason=self.reason,
                effect="any client can publish as any agent; use Mosquitto with dynamic security",
            )
        )

    def ensure_hub_role(self, hub_username: str) -> None:
        self._warn_once()

    def add_agent(self, agent_id: str, password: str) -> None:
        _check_credentials(agent_id, password)
        self._warn_once()

    def set_password(self, agent_id: str, password: str) -> None:
        _check_credentials(agent_id, password)
        self._warn_once()

    def remove_agent(self, agent_id: str) -> None:
        check_agent_id(agent_id)
        self._warn_once()

    def agents(self) -> list[str]:
        self._warn_once()
        return []

    def close(self) -> None:
        return None
