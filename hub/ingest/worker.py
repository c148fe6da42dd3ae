"""The MQTT ingest worker: subscribe, validate, batch, commit, then acknowledge.

paho delivers messages on its network thread; :meth:`IngestWorker._on_message` only counts them,
parses their topic (from a cache) and queues them (:mod:`hub.ingest.batches`: up to
``ingest.batch_size``, within ``ingest.batch_ms``). The ``ingest-writer`` thread takes it from
there (:mod:`hub.ingest.committer`): it validates each batch's payloads from their bytes, writes the
batch in one transaction and only then sends its PUBACKs (``manual_ack_set(True)``). A crash
between receipt and commit loses nothing: the broker redelivers to the persistent session and the
duplicates are ignored by ``result_id``. (A second thread validating the next batch while this one
is written measured no faster: both need the one interpreter lock.)

Invalid messages (topic outside the grammar, not JSON, schema errors, agent id differing from
the topic, a bug in validation itself) are counted per reason, logged and acknowledged without
waiting for a commit; they never reach the database and never stop the loop. An empty retained
payload (a cleared retained status) is acknowledged and ignored. After each commit the batch's
statuses and model events go to ``on_commit`` (the rollout engine's reconciliation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt

from hub.config import HubConfig
from hub.db.session import Database
from hub.ingest.admission import Admission
from hub.ingest.batches import Batches, Incoming
from hub.ingest.committer import Committer
from hub.ingest.stats import IngestStats
from hub.ingest.writer import IngestWriter, Message
from shared import topics
from shared.logs import kv
from shared.loops import paho_network_alive
from shared.mqtt import make_client, reason_ok

log = logging.getLogger(__name__)
#: topics parsed and remembered per worker (one per agent and kind); the cache is emptied beyond
TOPIC_CACHE_MAX = 65_536
#: the paho loop's liveness is recorded at most this often (seconds)
BEAT_S = 0.5


class IngestWorker:
    """One ingest worker: a persistent MQTT session plus a batching writer thread.

    Args:
        config: the hub config (mqtt section, ingest batching).
        db: where results go; the worker does not own it (the caller disposes it).
        stats: counters to update (shared with the web app in ``serve``).
        client_id: override of ``config.mqtt.client_id`` (each scale-out worker needs its own).
        on_commit: called on the writer thread with each committed batch's model events and
            statuses, after their PUBACKs (the rollout engine's reconciliation hook); it must not
            raise for outages it can recover from.
    """

    def __init__(
        self,
        config: HubConfig,
        db: Database,
        stats: IngestStats | None = None,
        client_id: str | None = None,
        on_commit: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self.config = config
        self.writer = IngestWriter(
            db, Admission(config.ingest.auto_register_agents), keep_connection=True, review=config.review
        )
        self.stats = stats or IngestStats()
        self.client_id = client_id or config.mqtt.client_id
        self._batches = Batches(config.ingest.batch_size, config.ingest.batch_ms / 1000.0)
        self._topics: dict[str, topics.Topic] = {}
        self._beat_due = 0.0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None
        self._committer = Committer(self.writer, self.stats, self._ack, on_commit, self._stop)

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (asynchronously, retrying) and start the writer thread; returns at once."""
        if self._thread is not None:
            raise RuntimeError("ingest worker already started")
        m = self.config.mqtt
        client = make_client(m, self.client_id, persistent=True)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.connect_async(m.host, m.port, keepalive=m.keepalive)
        client.loop_start()
        self._client = client
        # paho owns its network thread; the loop is alive while that thread runs
        self.stats.loops.watch("ingest-mqtt", lambda: paho_network_alive(client))
        self._thread = self.stats.loops.spawn("ingest-writer", self._write_loop, self._stop)
        self.stats.set_flags(running=True)
        log.info(
            kv(
                "ingest_started",
                broker=f"{m.host}:{m.port}",
                client_id=self.client_id,
                share_group=m.share_group or "-",
                batch_size=self.config.ingest.batch_size,
                batch_ms=self.config.ingest.batch_ms,
            )
        )

    def wait_connected(self, timeout: float) -> bool:
        """True once subscribed to the broker (bounded wait)."""
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is queued, acknowledge it, disconnect. Idempotent."""
        if self._thread is None:
            return
        self._stop.set()
        self._batches.close()  # paho's thread must not wait for room once the writer may be gone
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(kv("ingest_writer_still_running", after_s=timeout))
        else:
            self.writer.close()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self._thread = None
        self.stats.set_flags(running=False, connected=False)
        log.info(
            kv(
                "ingest_stopped",
                **{
                    k: v
                    for k, v in self.stats.snapshot().items()
                    if k in ("received", "stored", "duplicates", "invalid_total")
                },
            )
        )

    def run_until(self, stop: threading.Event) -> None:
        """Run in the foreground until ``stop`` is set (the ``leukonet hub ingest`` command)."""
        self.start()
        try:
            while not stop.wait(1.0):
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError("the ingest writer thread died; see the log above")
        finally:
            self.stop()

    # --- paho callbacks (network thread) ------------------------------------------------------
    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: object,
        properties: object,
    ) -> None:
        if not reason_ok(reason_code):
            log.error(kv("ingest_connect_refused", reason=reason_code))
            return
        self._generation += 1
        group = self.config.mqtt.share_group
        subs = [(topics.subscription(kind, group), 1) for kind in topics.AGENT_KINDS]
        client.subscribe(subs)
        self._connected.set()
        self.stats.set_flags(connected=True)
        log.info(
            kv(
                "ingest_connected",
                session_present=getattr(flags, "session_present", "?"),
                subscriptions=",".join(t for t, _ in subs),
            )
        )

    def _on_disconnect(
        self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object
    ) -> None:
        self._connected.clear()
        self.stats.set_flags(connected=False)
        if not self._stop.is_set():
            log.warning(kv("ingest_disconnected", reason=reason_code))

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        """paho network thread: whatever one message does, it is counted, acknowledged and the loop goes on.

        An unacknowledged poison message would come back after every restart, so even a bug in
        validation acknowledges it (counted as ``internal_error``, logged once with its topic).
        """
        try:
            self._receive(client, msg)
        except Exception as exc:  # noqa: BLE001 - one message must never kill paho's network thread
            self.stats.add_invalid("internal_error")
            log.exception(kv("ingest_message_failed", topic=str(msg.topic)[:200], error=repr(exc)[:300]))
            try:
                client.ack(msg.mid, msg.qos)
            except Exception as ack_exc:  # noqa: BLE001 - the session is gone: the broker redelivers
                log.error(kv("ingest_ack_failed", topic=str(msg.topic)[:200], error=ack_exc))

    def _receive(self, client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
        at = time.monotonic()
        self.stats.add_received()
        if at >= self._beat_due:
            self.stats.loops.beat("ingest-mqtt")
            self._beat_due = at + BEAT_S
        name = msg.topic
        if not msg.payload and msg.retain:
            # someone cleared a retained status (an agent decommissioned): nothing to store
            log.debug(kv("retained_cleared", topic=name[:200]))
            client.ack(msg.mid, msg.qos)
            return
        try:
            topic = self._topic(name)
        except topics.TopicError as exc:
            self._invalid("bad_topic", name, str(exc))
            client.ack(msg.mid, msg.qos)
            return
        if topic.kind not in topics.AGENT_KINDS:
            self._invalid("unexpected_kind", name, f"kind {topic.kind.value} is hub-owned")
            client.ack(msg.mid, msg.qos)
            return
        self._batches.put(Incoming(topic, name, bytes(msg.payload), msg.mid, msg.qos, self._generation, at))

    def _invalid(self, reason: str, topic: str, detail: str) -> None:
        self.stats.add_invalid(reason)
        log.warning(kv("invalid_message", reason=reason, topic=topic[:200], detail=detail[:300]))

    def _topic(self, name: str) -> topics.Topic:
        """:func:`shared.topics.parse`, remembered (paho's thread only); bad topics are not kept."""
        topic = self._topics.get(name)
        if topic is None:
            topic = topics.parse(name)
            if len(self._topics) >= TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[name] = topic
        return topic

    # --- writer thread ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            batch = self._batches.take(self._stop)
            if batch:
                items, messages = self._committer.validate(batch)
                if items:
                    self._committer.flush(items, messages)
            elif self._stop.is_set() and self._batches.empty():
                return

    def _ack(self, items: list[Incoming]) -> None:
        client = self._client
        if client is None:
            return
        connected = self._connected.is_set
        for item in items:
            # a message from an earlier connection is redelivered by the broker; acking its old
            # packet id on the new connection could acknowledge a different message
            if item.generation == self._generation and connected():
                client.ack(item.mid, item.qos)
