"""The writer side of an ingest worker: validate a batch, write it, acknowledge it, time it.

:meth:`Committer.validate` runs on the worker's ``ingest-writer`` thread: each payload is
validated from its bytes in one pass (pydantic's JSON validation) and checked against its topic;
the invalid ones (not JSON, schema errors, agent id differing from the topic, a bug in validation
itself) are counted per reason, logged and acknowledged at once. Validating a whole batch in one
loop, rather than each message between paho's own work on the network thread, measured about half
the CPU per message (the validator's code and data stay in the CPU caches).

:meth:`Committer.flush` then writes the batch: one transaction
(:class:`~hub.ingest.writer.IngestWriter`), the PUBACKs only after it commits, then the stats'
histograms (``batch_seconds`` from the first message's receipt to its PUBACKs, ``commit_seconds``
for the transaction, ``lag_seconds`` per stored result) and ``on_commit`` with the batch's statuses
and model events. A database outage is retried with back-off and nothing is acknowledged meanwhile;
a batch the database refuses is retried one message per transaction, so one bad message costs
only itself (``db_rejected``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError

from hub.ingest.admission import Message
from hub.ingest.batches import Incoming
from hub.ingest.stats import IngestStats
from hub.ingest.writer import IngestWriter
from shared import topics
from shared.logs import kv
from shared.schemas import AgentStatus, ClassificationResult, ModelEvent, PayloadError, parse_payload

log = logging.getLogger(__name__)
RETRY_MAX_S = 30.0


class Committer:
    """Validates, writes and acknowledges the batches of one worker.

    Args:
        writer: the worker's transaction writer.
        stats: the worker's counters and histograms.
        ack: sends the PUBACKs of items (the worker knows its connection).
        on_commit: the rollout engine's hook for committed statuses and model events.
        stop: set when the worker stops: an outage retry gives up, its batch left unacknowledged.
    """

    def __init__(
        self,
        writer: IngestWriter,
        stats: IngestStats,
        ack: Callable[[list[Incoming]], None],
        on_commit: Callable[[Sequence[Message]], None] | None,
        stop: threading.Event,
    ) -> None:
        self.writer = writer
        self.stats = stats
        self.ack = ack
        self.on_commit = on_commit
        self.stop = stop

    def validate(self, batch: list[Incoming]) -> tuple[list[Incoming], list[Message]]:
        """The valid messages of ``batch`` and their items; the others are counted and acked now."""
        items: list[Incoming] = []
        messages: list[Message] = []
        refused: list[Incoming] = []
        for item in batch:
            try:
                reason, detail, message = check(item.topic, item.payload)
            except Exception as exc:  # noqa: BLE001 - a bug in validation must not stop ingest
                self.stats.add_invalid("internal_error")
                log.exception(kv("ingest_message_failed", topic=item.name[:200], error=repr(exc)[:300]))
                refused.append(item)
                continue
            if message is None:
                self.stats.add_invalid(reason)
                log.warning(kv("invalid_message", reason=reason, topic=item.name[:200], detail=detail[:300]))
                refused.append(item)
            else:
                items.append(item)
                messages.append(message)
        if refused:
            self.ack(refused)
        return items, messages

    def flush(self, items: list[Incoming], messages: list[Message]) -> None:
        """Write ``messages`` in one transaction, then acknowledge ``items`` (see the module doc)."""
        delay = 0.5
        while True:
            try:
                started = time.monotonic()
                outcome = self.writer.write(messages)
                committed = time.monotonic()
            except (OperationalError, InterfaceError) as exc:
                self.stats.add(db_errors=1)
                log.error(
                    kv("ingest_db_unavailable", batch=len(items), retry_in_s=delay, error=str(exc)[:300])
                )
                if self.stop.wait(delay):
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
                        kv("ingest_message_rejected", kind=type(messages[0]).__name__, error=str(exc)[:300])
                    )
                    self.ack(items)
                    return
                log.warning(
                    kv(
                        "ingest_batch_failed",
                        batch=len(items),
                        error=str(exc)[:300],
                        action="retrying one message per transaction",
                    )
                )
                for item, message in zip(items, messages, strict=True):
                    self.flush([item], [message])
                return
            self.stats.committed(outcome.stored, outcome.duplicates, outcome.statuses, outcome.events)
            for reason, n in outcome.refused.items():
                self.stats.add_invalid(reason, n)
            self.stats.loops.beat("ingest-writer")
            self.ack(items)
            self.stats.observe_batch(time.monotonic() - items[0].at, committed - started, outcome.lags)
            if self.on_commit is not None:
                reports = [m for m in messages if isinstance(m, (AgentStatus, ModelEvent))]
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


def check(topic: topics.Topic, payload: bytes) -> tuple[str, str, Message | None]:
    """``payload`` validated for ``topic``: ``("", "", message)``, or ``(reason, detail, None)``."""
    try:
        message = parse_payload(topic.kind, payload)
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
