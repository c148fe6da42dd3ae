"""The MQTT ingest worker: subscribe, validate, batch, commit, then acknowledge.

paho delivers messages on its network thread; :meth:`IngestWorker._on_message` only validates
and queues them. A writer thread takes up to ``ingest.batch_size`` messages (or what arrived
within ``ingest.batch_ms``), writes them in one transaction and only then sends the PUBACKs
(``manual_ack_set(True)``), so a crash between receipt and commit loses nothing: the broker
redelivers to the persistent session and the duplicates are ignored by ``result_id``.

Invalid messages (topic outside the grammar, not JSON, schema errors, agent id differing from
the topic) are counted per reason, logged and acknowledged; they never reach the database and
never stop the loop. An empty retained payload (a cleared retained status) is acknowledged and
ignored. After each commit the batch's statuses and model events go to ``on_commit`` (the
rollout engine's reconciliation).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from hub.config import HubConfig
from hub.db.session import Database
from hub.ingest.admission import Admission
from hub.ingest.stats import IngestStats
from hub.ingest.writer import IngestWriter, Message
from shared import topics
from shared.logs import kv
from shared.loops import paho_network_alive
from shared.mqtt import make_client, reason_ok
from shared.schemas import AgentStatus, ClassificationResult, ModelEvent, PayloadError, parse_payload

log = logging.getLogger(__name__)
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class Incoming:
    """A validated message waiting for its batch, with what is needed to acknowledge it."""

    message: Message
    mid: int
    qos: int
    generation: int


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
        self.on_commit = on_commit
        self.writer = IngestWriter(db, Admission(config.ingest.auto_register_agents))
        self.stats = stats or IngestStats()
        self.client_id = client_id or config.mqtt.client_id
        self._queue: queue.Queue[Incoming] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._generation = 0
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None

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
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(kv("ingest_writer_still_running", after_s=timeout))
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
        self.stats.add(received=1)
        self.stats.loops.beat("ingest-mqtt")
        if not msg.payload and msg.retain:
            # someone cleared a retained status (an agent decommissioned): nothing to store
            log.debug(kv("retained_cleared", topic=msg.topic[:200]))
            client.ack(msg.mid, msg.qos)
            return
        reason, detail, message = self._validate(msg)
        if message is None:
            self.stats.add_invalid(reason)
            log.warning(kv("invalid_message", reason=reason, topic=msg.topic[:200], detail=detail[:300]))
            client.ack(msg.mid, msg.qos)
            return
        self._queue.put(Incoming(message, msg.mid, msg.qos, self._generation))

    @staticmethod
    def _validate(msg: mqtt.MQTTMessage) -> tuple[str, str, Message | None]:
        try:
            topic = topics.parse(msg.topic)
        except topics.TopicError as exc:
            return "bad_topic", str(exc), None
        if topic.kind not in topics.AGENT_KINDS:
            return "unexpected_kind", f"kind {topic.kind.value} is hub-owned", None
        try:
            message = parse_payload(topic.kind, bytes(msg.payload))
        except PayloadError as exc:
            return exc.reason.value, str(exc), None
        if not isinstance(message, (ClassificationResult, AgentStatus, ModelEvent)):
            return "unexpected_kind", f"payload type {type(message).__name__}", None
        if message.agent_id != topic.agent_id:
            return (
                "agent_mismatch",
                f"payload agent_id {message.agent_id!r} on topic of {topic.agent_id!r}",
                None,
            )
        return "", "", message

    # --- writer thread ------------------------------------------------------------------------
    def _write_loop(self) -> None:
        batch_size = self.config.ingest.batch_size
        batch_s = self.config.ingest.batch_ms / 1000.0
        pending: list[Incoming] = []
        first_at = 0.0
        while True:
            wait = max(first_at + batch_s - time.monotonic(), 0.0) if pending else 0.2
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                if not pending:
                    first_at = time.monotonic()
                pending.append(item)
                while len(pending) < batch_size:
                    pending.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            stopping = self._stop.is_set()
            due = pending and (len(pending) >= batch_size or time.monotonic() - first_at >= batch_s)
            if pending and (due or stopping):
                self._flush(pending)
                pending = []
            if stopping and self._queue.empty() and not pending:
                return

    def _flush(self, items: list[Incoming]) -> None:
        delay = 0.5
        while True:
            try:
                outcome = self.writer.write([i.message for i in items])
            except (OperationalError, InterfaceError) as exc:
                self.stats.add(db_errors=1)
                log.error(
                    kv("ingest_db_unavailable", batch=len(items), retry_in_s=delay, error=str(exc)[:300])
                )
                if self._stop.wait(delay):
                    log.warning(
                        kv(
                            "ingest_batch_not_committed",
                            batch=len(items),
                            note="left unacknowledged; the broker redelivers them",
                        )
                    )
                    return
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            except SQLAlchemyError as exc:
                self.stats.add(db_errors=1)
                if len(items) == 1:
                    # one message the database refuses (not an outage): count it and let it go
                    self.stats.add_invalid("db_rejected")
                    log.error(
                        kv(
                            "ingest_message_rejected",
                            kind=type(items[0].message).__name__,
                            error=str(exc)[:300],
                        )
                    )
                    self._ack(items)
                    return
                log.warning(
                    kv(
                        "ingest_batch_failed",
                        batch=len(items),
                        error=str(exc)[:300],
                        action="retrying one message per transaction",
                    )
                )
                for item in items:
                    self._flush([item])
                return
            self.stats.committed(outcome.stored, outcome.duplicates, outcome.statuses, outcome.events)
            for reason, n in outcome.refused.items():
                self.stats.add_invalid(reason, n)
            self.stats.loops.beat("ingest-writer")
            self._ack(items)
            if self.on_commit is not None:
                reports = [i.message for i in items if isinstance(i.message, (AgentStatus, ModelEvent))]
                if reports:
                    self._reconcile(reports)
            log.debug(
                kv("ingest_batch", size=len(items), stored=outcome.stored, duplicates=outcome.duplicates)
            )
            return

    def _reconcile(self, reports: Sequence[Message]) -> None:
        """Hand committed reports to the rollout engine; its errors are counted, never the writer's end."""
        assert self.on_commit is not None
        try:
            self.on_commit(reports)
        except Exception as exc:  # noqa: BLE001 - reconciliation retries on its next tick
            self.stats.add(reconcile_errors=1)
            log.exception(kv("reconcile_failed", reports=len(reports), error=repr(exc)[:300]))

    def _ack(self, items: list[Incoming]) -> None:
        client = self._client
        if client is None:
            return
        for item in items:
            # a message from an earlier connection is redelivered by the broker; acking its old
            # packet id on the new connection could acknowledge a different message
            if item.generation == self._generation and self._connected.is_set():
                client.ack(item.mid, item.qos)
