"""The agent's MQTT link: status, results from the outbox, model events, desired-model updates.

One paho-mqtt 2.x client (``CallbackAPIVersion.VERSION2``) with client id = agent id and
``clean_session=False``, so the broker keeps the agent's QoS 1 subscription to its ``desired``
topic while it is away. The last will is a retained ``AgentStatus(state=offline)`` on the status
topic; every (re)connect publishes a retained ``online`` status and re-subscribes. paho reconnects
by itself with exponential backoff between ``reconnect_min_s`` and ``reconnect_max_s``. The broker
login is asked of ``mqtt_login`` before every connect and reconnect (paho's ``on_pre_connect``), so
credentials rotated while the agent runs (:class:`agents.credentials.CredentialSource`) are used from
the next reconnect on; the session that is up keeps running.

Results flow from the :class:`agents.outbox.Outbox` through a single pump thread: it publishes
rows in sequence order (QoS 1, at most ``window`` unacknowledged) and deletes a row when the
broker's PUBACK for its message id arrives (``on_publish``). paho re-sends in-flight messages
itself after a reconnect; rows it never got are published when the connection is back. Callbacks
never take the pump's state lock while paho holds its own, so the two threads cannot deadlock.

Which rows go next is :class:`agents.drain.BacklogDrain`'s call: in sequence order, except while
the outbox holds a backlog (deeper than ``backlog_rows``) and ``drain_rate_per_s`` is set; then
live results go first and the backlog at that rate, so an agent back from an outage does not
bury every other agent's live results in the hub's queue at the broker (see that module).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agents.config import MqttConfig
from agents.drain import BacklogDrain
from agents.outbox import Outbox, OutboxError
from shared.logs import kv
from shared.loops import Loops, paho_network_alive
from shared.mqtt import make_client
from shared.schemas import AgentState, AgentStatus, DesiredModel, ModelEvent, PayloadError, parse_payload
from shared.topics import Kind, TopicError, build, parse

log = logging.getLogger(__name__)

StatusFn = Callable[[AgentState], AgentStatus]
DesiredFn = Callable[[DesiredModel], None]
#: the broker login to use now: (username, password); (None, None) connects anonymously
LoginFn = Callable[[], tuple[str | None, str | None]]


class Link:
    """MQTT session of one agent. ``start()`` connects in the background; ``stop()`` says goodbye.

    ``mqtt_login``, when given, is asked for the broker login before every (re)connect; without it
    the login of ``mqtt_config`` is used throughout. ``drain_rate_per_s`` (0: no limit) and
    ``backlog_rows`` set the backlog drain (:class:`agents.drain.BacklogDrain`); ``clock``
    (monotonic seconds) paces it.

    Raises:
        ValueError: a negative ``drain_rate_per_s`` or ``backlog_rows`` below 1.
    """

    def __init__(
        self,
        agent_id: str,
        mqtt_config: MqttConfig,
        outbox: Outbox,
        status_fn: StatusFn,
        on_desired: DesiredFn,
        status_interval_s: float = 30.0,
        window: int = 100,
        loops: Loops | None = None,
        mqtt_login: LoginFn | None = None,
        drain_rate_per_s: float = 0.0,
        backlog_rows: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.agent_id = agent_id
        self._cfg = mqtt_config
        self._mqtt_login = mqtt_login
        #: desired messages refused (bad topic, bad payload, or an error while handling one)
        self.rejected_messages = 0
        self.loops = loops or Loops()
        self._outbox = outbox
        self._status_fn = status_fn
        self._on_desired = on_desired
        self._status_interval_s = status_interval_s
        self._window = window
        self._topics = {k: build(agent_id, k) for k in Kind}
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acks: queue.SimpleQueue[int] = queue.SimpleQueue()
        # Pump-thread state: message id -> outbox seq of results in flight, and what to send next.
        self._inflight: dict[int, int] = {}
        self.drain = BacklogDrain(outbox, drain_rate_per_s, backlog_rows, clock)
        self._threads: list[threading.Thread] = []
        self.client = self._make_client()

    # --- setup ------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = make_client(self._cfg, self.agent_id, persistent=True)
        offline = self._status_fn(AgentState.OFFLINE)
        client.will_set(self._topics[Kind.STATUS], offline.to_json(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        if self._mqtt_login is not None:
            client.on_pre_connect = self._apply_login
        return client

    def start(self) -> None:
        """Connect in the background (retrying until it works) and start the pump and status threads."""
        log.info(kv("mqtt_connecting", host=self._cfg.host, port=self._cfg.port, client_id=self.agent_id))
        self.client.connect_async(self._cfg.host, self._cfg.port, keepalive=self._cfg.keepalive)
        self.client.loop_start()
        client = self.client
        self.loops.watch("mqtt", lambda: paho_network_alive(client))
        for target, name in ((self._pump, "outbox-pump"), (self._status_loop, "status")):
            self._threads.append(self.loops.spawn(name, target, self._stop))

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a connection; True when connected."""
        return self._connected.wait(timeout)

    def notify_outbox(self) -> None:
        """A result was put in the outbox: wake the pump."""
        self._wake.set()

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _apply_login(self, client: mqtt.Client, userdata: Any) -> None:
        """Before every (re)connect: the current login (a rotated password from the next connect on)."""
        assert self._mqtt_login is not None
        try:
            username, password = self._mqtt_login()
        except Exception as exc:  # noqa: BLE001 - an exception here would end paho's network thread
            log.error(kv("mqtt_login_failed", error=repr(exc)[:300], action="connecting with the last login"))
            return
        client.username_pw_set(username, password)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error(
                kv("mqtt_connect_refused", reason=reason_code, host=self._cfg.host, port=self._cfg.port)
            )
            return
        log.info(
            kv(
                "mqtt_connected",
                host=self._cfg.host,
                port=self._cfg.port,
                session_present=getattr(flags, "session_present", None),
            )
        )
        self._connected.set()
        client.subscribe(self._topics[Kind.DESIRED], qos=1)
        self._publish_status_now(client)
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning(kv("mqtt_disconnected", reason=reason_code, retry="backoff"))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any
    ) -> None:
        self._acks.put(mid)
        self._wake.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """paho network thread: a bad or poison ``desired`` is logged and dropped; the loop goes on."""
        try:
            self._receive(message)
        except Exception as exc:  # noqa: BLE001 - one message must never kill paho's network thread
            self.rejected_messages += 1
            log.exception(kv("desired_failed", topic=str(message.topic)[:200], error=repr(exc)[:300]))

    def _receive(self, message: mqtt.MQTTMessage) -> None:
        self.loops.beat("mqtt")
        if not message.payload:
            return  # a cleared retained desired state: nothing to do
        try:
            topic = parse(message.topic)
            desired = parse_payload(Kind.DESIRED, bytes(message.payload))
        except (TopicError, PayloadError) as exc:
            self.rejected_messages += 1
            log.error(kv("desired_rejected", topic=message.topic[:200], error=str(exc)[:500]))
            return
        if topic.kind is not Kind.DESIRED or not isinstance(desired, DesiredModel):
            log.error(kv("unexpected_message", topic=message.topic))
            return
        if desired.agent_id != self.agent_id:
            log.error(
                kv(
                    "desired_rejected",
                    topic=message.topic,
                    error=f"payload is for agent {desired.agent_id}, not {self.agent_id}",
                )
            )
            return
        self._on_desired(desired)

    # --- publishing ---------------------------------------------------------------------------

    def _publish_status_now(self, client: mqtt.Client) -> None:
        status = self._status_fn(AgentState.ONLINE)
        client.publish(self._topics[Kind.STATUS], status.to_json(), qos=1, retain=True)

    def publish_status(self) -> None:
        """Publish a retained online status with fresh vitals, when connected (else the next connect does)."""
        if self.connected:
            self._publish_status_now(self.client)

    def publish_event(self, event: ModelEvent) -> None:
        """Publish a model event (QoS 1; paho queues it while disconnected)."""
        log.info(
            kv(
                "model_event",
                kind=event.event.value,
                model=event.model_name,
                version=event.model_version,
                detail=event.detail,
            )
        )
        self.client.publish(self._topics[Kind.EVENTS], event.to_json(), qos=1)

    def _status_loop(self) -> None:
        while not self._stop.wait(self._status_interval_s):
            self.publish_status()
            self.loops.beat("status")

    def _pump(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.drain.wait_s(0.5))
            self._wake.clear()
            self.loops.beat("outbox-pump")
            self._drain_acks()
            if self.connected:
                self._fill_window()

    def _drain_acks(self) -> None:
        acked: list[int] = []
        while True:
            try:
                mid = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._inflight.pop(mid, None)
            if seq is not None:  # status and event acks are not outbox rows
                acked.append(seq)
        try:
            self._outbox.ack_many(acked)
        except OutboxError as exc:
            # The broker has these results; they stay in the outbox and are sent again after a
            # restart (the hub drops the duplicates). Not fatal for the pump.
            log.error(kv("outbox_ack_failed", rows=len(acked), error=exc))

    def _fill_window(self) -> None:
        room = self._window - len(self._inflight)
        if room <= 0:
            return
        for row in self.drain.next_rows(room):
            info = self.client.publish(row.topic, row.payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error(kv("result_publish_failed", result_id=row.result_id, rc=mqtt.error_string(info.rc)))
                return  # retried on the next wake-up
            # NO_CONN: paho queued it and sends it after the reconnect; the ack will still come.
            self._inflight[info.mid] = row.seq
            self.drain.sent(row)
        self._drain_acks()

    # --- shutdown ----------------------------------------------------------------------------

    def stop(self, timeout: float = 3.0) -> None:
        """Publish a retained offline status (when connected), disconnect and stop every thread."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        if self.connected:
            info = self.client.publish(
                self._topics[Kind.STATUS], self._status_fn(AgentState.OFFLINE).to_json(), qos=1, retain=True
            )
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                info.wait_for_publish(timeout)
        self.client.disconnect()
        self.client.loop_stop()
        # paho closes its internal wake-up socket pair only in reinitialise() or at garbage
        # collection; close it now so a stopped agent holds no sockets.
        self.client.reinitialise(client_id=self.agent_id, clean_session=False)
        self._connected.clear()
        log.info(kv("mqtt_stopped", agent_id=self.agent_id))
