"""The queue between paho's network thread and the ingest writer, and when a batch is complete.

The hub acknowledges a message only after the transaction that stored it commits, so the broker
lets it hold only so many unacknowledged QoS 1 messages at a time (Mosquitto's
``max_inflight_messages``, 20 by default; MQTT 5's receive maximum) and sends nothing more until
some are acknowledged. A batch therefore ends at the first of:

* ``ingest.batch_size`` messages;
* ``ingest.batch_ms`` after its first message arrived (a trickle is still written in batches);
* a pause of :data:`IDLE_S` in the flow once the batch holds :data:`MIN_WINDOW` messages or
  more: a broker that stops there is most likely waiting for our acknowledgements, and waiting
  longer would only idle. Below :data:`MIN_WINDOW` no broker's default window has been reached, so
  a pause means a trickle and the batch waits for ``batch_ms``.

When the writer falls behind, whatever has queued is taken at once, up to ``batch_size``. While a
batch fills, the writer is not woken per message (a thread switch per message costs more than
validating it): it looks at the queue every :data:`IDLE_S`, and the producer wakes it once the
queue holds a full batch.

At most ``batch_size`` messages wait in the queue (one batch fills while the previous one is
written): paho's network thread then waits in :meth:`Batches.put` until the writer takes a batch, so
TCP pushes back on the broker, which keeps the backlog, instead of the hub holding an unbounded
backlog of validated messages in memory.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

from shared.topics import Topic

#: the smallest in-flight window a broker gives by default (Mosquitto's max_inflight_messages)
MIN_WINDOW = 20
#: a pause this long (seconds) ends a batch of at least MIN_WINDOW messages
IDLE_S = 0.002
#: how often (seconds) a put waiting for room checks again, should a wake-up be missed
ROOM_POLL_S = 0.1


@dataclass(slots=True)
class Incoming:
    """A message waiting for its batch (validated with it), with what is needed to acknowledge it."""

    topic: Topic
    #: the topic as received (for the log)
    name: str
    payload: bytes
    mid: int
    qos: int
    #: the connection it came on (:attr:`IngestWorker._generation`): acked only on that one
    generation: int
    #: ``time.monotonic()`` when paho handed it over
    at: float


class Batches:
    """A thread-safe queue of :class:`Incoming` that hands them out in batches.

    Args:
        size: most messages per batch (``ingest.batch_size``).
        wait_s: longest wait for a batch to fill, from its first message (``ingest.batch_ms``).
    """

    def __init__(self, size: int, wait_s: float) -> None:
        self.size = size
        self.wait_s = wait_s
        self.window = min(MIN_WINDOW, size)
        self._queue: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self._wake = threading.Event()  # set by put() when the queue reaches the window or a batch
        self._room = threading.Event()  # set by take() once it has taken a batch out
        self._closed = False

    def put(self, item: Incoming) -> None:
        """Queue ``item`` (paho's thread). Wake the writer when the queue reaches the window or a
        full batch; once a full batch waits, wait until the writer takes it (or :meth:`close`)."""
        q = self._queue
        q.put(item)
        n = q.qsize()
        if n < self.window - 1:
            return
        if n == self.window - 1 or n >= self.size - 1:  # the writer holds a batch's first message
            self._wake.set()
        if n < self.size or self._closed:
            return
        room = self._room
        while True:
            room.clear()  # before looking: a take() after this sets it again
            if q.qsize() < self.size or self._closed:
                return
            room.wait(ROOM_POLL_S)

    def close(self) -> None:
        """Stop making :meth:`put` wait (the writer is going away)."""
        self._closed = True
        self._room.set()

    def empty(self) -> bool:
        return self._queue.empty()

    def take(self, stop: threading.Event, poll_s: float = 0.2) -> list[Incoming]:
        """The next batch; empty when nothing arrived within ``poll_s``. Once ``stop`` is set, what
        is queued is handed out without waiting for more."""
        q = self._queue
        try:
            first = q.get(timeout=poll_s)
        except queue.Empty:
            return []
        deadline = first.at + self.wait_s
        seen = 0
        while True:
            n = q.qsize() + 1  # with ``first``
            left = deadline - time.monotonic()
            if n >= self.size or left <= 0 or stop.is_set():
                break
            if n >= self.window:
                if n == seen:
                    break  # nothing came for IDLE_S: the broker waits for our acknowledgements
                seen, timeout = n, min(left, IDLE_S)
            else:
                timeout = left  # a trickle: put() wakes us at the window or a full batch
            self._wake.clear()  # then look again: a put() from here on sets it
            now = q.qsize() + 1
            if now >= self.size or (n < self.window <= now):
                continue
            self._wake.wait(timeout)
        batch = [first]
        try:
            while len(batch) < self.size:
                batch.append(q.get_nowait())
        except queue.Empty:
            pass
        self._room.set()
        return batch
