"""The request/reply channel to Mosquitto's dynamic security plugin, as its admin user.

Commands go to ``$CONTROL/dynamic-security/v1`` as JSON, answers come back on ``.../response``
carrying our ``correlationData``. :class:`ControlChannel` connects lazily (paho reconnects after a
drop), sends one request and waits a bounded time for the answer that carries its correlation
data, ignoring answers meant for other admins on the same response topic. It is not thread-safe:
its owner (:class:`hub.broker.dynsec.DynSecAccounts`) sends one request at a time under a lock.
What the commands mean, and which of them disconnect whom, is :mod:`hub.broker.dynsec`'s concern.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from shared.logs import kv
from shared.mqtt import MqttSettings, make_client, reason_ok

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"


class BrokerAccountsError(RuntimeError):
    """The broker's accounts could not be read or changed; the message says why and what to do."""


class ControlChannel:
    """One admin connection to the dynamic security plugin, for request/answer round trips.

    Args:
        settings: how to reach the broker; ``username`` / ``password`` must be a dynsec admin.
        client_id: this connection's client id (not a session the hub relies on).
        timeout_s: longest wait for the connection and for each answer.
    """

    def __init__(self, settings: MqttSettings, client_id: str, timeout_s: float) -> None:
        self._settings = settings
        self._client_id = client_id
        self._timeout = timeout_s
        self._client: mqtt.Client | None = None
        self._ready = threading.Event()  # connected and subscribed to the response topic
        self._dropped = threading.Event()  # set on each disconnect
        self._refusal = ""  # why the last connect or subscribe failed, for the error message
        self._sub_mid: int | None = None
        self._waiting: str | None = None
        self._answer: list[dict[str, Any]] | None = None
        self._answered = threading.Event()

    @property
    def where(self) -> str:
        """``host:port`` of the broker, for error messages."""
        return f"{self._settings.host}:{self._settings.port}"

    def run(
        self, *commands: dict[str, Any], ok_errors: frozenset[str] | set[str] = frozenset()
    ) -> list[dict[str, Any]]:
        """Send ``commands`` in one request; their ``data`` in order ({} for an error in ``ok_errors``).

        Raises:
            BrokerAccountsError: the broker cannot be reached, does not answer, or answers a
                command with an error not in ``ok_errors``.
        """
        answers = self.call(list(commands), kicks_self=False)
        assert answers is not None  # only a self-kicking call may come back without answers
        out: list[dict[str, Any]] = []
        for command, answer in zip(commands, answers, strict=True):
            error = answer.get("error")
            if error and error not in ok_errors:
                target = command.get("username") or command.get("rolename") or ""
                raise BrokerAccountsError(
                    f"the broker at {self.where} refused {command['command']} {target}: {error}"
                )
            data = answer.get("data")
            out.append(data if isinstance(data, dict) and not error else {})
        return out

    def call(self, commands: list[dict[str, Any]], kicks_self: bool) -> list[dict[str, Any]] | None:
        """One request/answer round trip: the raw answers, one per command.

        With ``kicks_self`` (the commands disconnect this very user) the broker may drop us before
        it answers: then this reconnects and returns None, and the caller reads the change back.

        Raises:
            BrokerAccountsError: no connection, no answer in time, or fewer answers than commands.
        """
        client = self._connect()
        request_id = uuid.uuid4().hex
        payload = json.dumps({"commands": [{**c, "correlationData": request_id} for c in commands]})
        self._answer = None
        self._answered.clear()
        self._dropped.clear()
        self._waiting = request_id
        client.publish(CONTROL_TOPIC, payload, qos=1)
        deadline = time.monotonic() + self._timeout
        while not self._answered.wait(0.05):
            if kicks_self and self._dropped.is_set():
                self._connect()  # the caller reads the account back to confirm the change
                return None
            if time.monotonic() > deadline:
                self._waiting = None
                raise BrokerAccountsError(
                    f"no answer from the dynamic security plugin of the broker at {self.where} within "
                    f"{self._timeout:.0f} s ({commands[0]['command']}); check that its mosquitto.conf "
                    "loads the plugin (plugin .../mosquitto_dynamic_security.so) and that the broker is up"
                )
        self._waiting = None
        answers: list[dict[str, Any]] = self._answer or []
        if len(answers) != len(commands):
            raise BrokerAccountsError(
                f"the broker at {self.where} answered {len(answers)} of {len(commands)} commands"
            )
        return answers

    def close(self) -> None:
        """Disconnect; a later call connects again."""
        client, self._client = self._client, None
        self._ready.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _connect(self) -> mqtt.Client:
        if self._client is None:
            self._ready.clear()
            self._refusal = ""
            client = make_client(self._settings, self._client_id, persistent=False)
            client.on_connect = self._on_connect
            client.on_subscribe = self._on_subscribe
            client.on_disconnect = self._on_disconnect
            client.on_message = self._on_message
            client.connect_async(self._settings.host, self._settings.port, keepalive=self._settings.keepalive)
            client.loop_start()
            self._client = client
        deadline = time.monotonic() + self._timeout
        # a refused login is final (paho would retry it forever): fail at once, naming the fix
        while not self._ready.wait(0.05) and not self._refusal and time.monotonic() < deadline:
            pass
        if not self._ready.is_set():
            why = self._refusal or f"no connection within {self._timeout:.0f} s"
            self.close()
            user = self._settings.username or "(anonymous)"
            raise BrokerAccountsError(
                f"cannot manage broker accounts on {self.where} as {user!r}: "
                f"{why}; check that the broker is up and that mqtt.username / mqtt.password are its "
                "dynamic-security admin (the embedded broker and docker/compose.yaml create one)"
            )
        return self._client

    # --- paho callbacks (network thread) --------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, reason: object, _p: object) -> None:
        if not reason_ok(reason):
            self._refusal = f"the broker refused the login ({reason})"
            return
        self._refusal = ""
        _rc, self._sub_mid = client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: object, mid: int, reasons: list[Any], _p: object) -> None:
        if mid != self._sub_mid:
            return
        if all(reason_ok(r) for r in reasons):
            self._ready.set()
        else:
            self._refusal = f"the user may not subscribe to {RESPONSE_TOPIC} (not a dynamic-security admin)"

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _f: object, _reason: object, _p: object) -> None:
        self._ready.clear()
        self._dropped.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            answers = json.loads(msg.payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.warning(kv("dynsec_bad_response", topic=msg.topic, size=len(msg.payload)))
            return
        # other admins (another hub process) share the response topic: take only our own answer
        first = answers[0] if isinstance(answers, list) and answers else None
        if isinstance(first, dict) and self._waiting and first.get("correlationData") == self._waiting:
            self._answer = answers
            self._answered.set()
