"""Backlog drain: which outbox rows the MQTT link publishes next, and how fast a backlog may go.

Why the agent limits itself. The PUBACK that lets the link delete a row comes from the broker on
receipt, not from the hub, so an agent back from a long outage can hand the broker tens of
thousands of results in seconds. They queue in the hub's persistent session, one queue in arrival
order shared by every agent, and a live result from any other agent is delivered behind all of
them. The hub cannot reorder what it has not been given (the broker hands it at most
``max_inflight_messages`` at a time) and Mosquitto has no per-client publish rate limit, so the
fairness has to come from the agents: a draining agent publishes its backlog no faster than
``drain_rate_per_s``. While the draining agents together stay below the hub's ingest rate, the
hub's queue stays short and a live result waits behind only what arrived just before it.

What is backlog and what is live (:class:`BacklogDrain`):

- When the pump finds the outbox deeper than ``backlog_rows`` with rows not yet published, it
  marks the newest row: that row and everything older is the backlog; rows committed after the
  mark are live.
- Live rows are published as soon as they are committed, ahead of the backlog and without limit:
  they are what the agent would send anyway.
- Backlog rows are published oldest first, at most ``drain_rate_per_s`` a second (a token bucket
  holding a tenth of a second's worth), while the outbox is deeper than ``backlog_rows``; the
  rest goes at full speed, a burst no larger than a shallow outbox sends anyway.
- Once the whole backlog is published the pump is back to plain sequence order.

Publishing live rows ahead of older ones changes nothing on the hub: the outbox holds results
only (statuses and events are published directly), each keyed by its UUID and carrying its
``captured_at``; the hub drops duplicates by id and lists results by ``captured_at``.
Acknowledgements are unchanged: a row is deleted only when the broker's PUBACK for it arrives.

The trade-off: a backlog of N rows takes N / ``drain_rate_per_s`` seconds (50,000 at 100/s: 8 min
20 s) to reach the hub. ``drain_rate_per_s = 0`` (the default) drains as fast as the broker takes
the rows, and every other agent's live results wait behind them at the hub.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from agents.outbox import Outbox, OutboxRow
from shared.logs import kv

log = logging.getLogger(__name__)

#: the token bucket holds this many seconds' worth of the drain rate (at least one row)
BURST_S = 0.1
#: shortest pump sleep while the drain waits for tokens (bounds the wake-ups at high rates)
MIN_WAIT_S = 0.01


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; starts full.

    Args:
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, rate_per_s: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate_per_s > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def available(self) -> int:
        """Whole tokens that may be spent now."""
        self._refill()
        return int(self._tokens)

    def spend(self, n: int = 1) -> None:
        self._tokens -= n

    def wait_s(self) -> float:
        """Seconds until the next whole token (0 when one is there)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s


@dataclass
class _Backlog:
    cursor: int  # the last backlog row handed out
    end: int  # the newest row of the backlog (the mark)
    rows: int  # outbox depth when it was marked
    started: float  # clock time it was marked


class BacklogDrain:
    """The pump's publishing order and backlog rate limit over ``outbox`` (see the module docstring).

    Used by the link's pump thread only: :meth:`next_rows` says which rows to publish now and
    :meth:`sent` is told of each one handed to paho, in that order. Not thread-safe.

    Args:
        rate_per_s: most backlog rows a second while the outbox is deeper than ``backlog_rows``;
            0 disables the limit (rows go in sequence order as fast as the window allows).
        backlog_rows: an outbox deeper than this holds a backlog.
        clock: monotonic seconds (tests pass a fake one).

    Raises:
        ValueError: a negative rate or ``backlog_rows`` below 1.
    """

    def __init__(
        self,
        outbox: Outbox,
        rate_per_s: float = 0.0,
        backlog_rows: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s < 0:
            raise ValueError(f"drain_rate_per_s must be >= 0 (0: no limit), got {rate_per_s}")
        if backlog_rows < 1:
            raise ValueError(f"backlog_rows must be >= 1, got {backlog_rows}")
        self._outbox = outbox
        self.rate_per_s = rate_per_s
        self.backlog_rows = backlog_rows
        self._clock = clock
        self._bucket = TokenBucket(rate_per_s, max(1.0, rate_per_s * BURST_S), clock) if rate_per_s else None
        # In sequence order: the last row handed out. While draining: the last live row handed out.
        self._last_seq = 0
        self._backlog: _Backlog | None = None
        self._throttled = False

    @property
    def draining(self) -> bool:
        """A backlog is marked and not all of it has been handed out yet."""
        return self._backlog is not None

    def _limited(self) -> bool:
        return self._bucket is not None and self._outbox.depth() > self.backlog_rows

    def _finish(self, b: _Backlog) -> None:
        log.info(kv("backlog_drained", rows=b.rows, seconds=round(self._clock() - b.started, 1)))
        self._backlog = None  # _last_seq (the last live row, >= the mark) goes on from here

    def _update(self) -> None:
        if self._backlog is not None:
            b = self._backlog
            if not self._outbox.after(b.cursor, 1, until=b.end):
                self._finish(b)  # nothing left to hand out (a safety net: sent() normally sees the end)
            return
        if not self._limited():
            return
        newest = self._outbox.newest_seq()
        if newest <= self._last_seq:
            return  # everything is out already, waiting for PUBACKs
        depth = self._outbox.depth()
        self._backlog = _Backlog(self._last_seq, newest, depth, self._clock())
        self._last_seq = newest
        log.warning(
            kv(
                "backlog_draining",
                rows=depth,
                rate_per_s=self.rate_per_s,
                eta_s=round(depth / self.rate_per_s),
                note="live results go first, the backlog at the rate limit",
            )
        )

    def next_rows(self, room: int) -> list[OutboxRow]:
        """Up to ``room`` rows to publish now, in publishing order: live rows, then backlog rows."""
        if room <= 0:
            return []
        self._update()
        rows = self._outbox.after(self._last_seq, room)
        b = self._backlog
        if b is None:
            return rows
        room -= len(rows)
        self._throttled = self._limited()
        if self._throttled:
            assert self._bucket is not None
            room = min(room, self._bucket.available())
        if room > 0:
            rows += self._outbox.after(b.cursor, room, until=b.end)
        return rows

    def sent(self, row: OutboxRow) -> None:
        """``row`` (from the last :meth:`next_rows`) was handed to paho."""
        b = self._backlog
        if b is not None and row.seq <= b.end:
            b.cursor = row.seq
            if self._throttled:
                assert self._bucket is not None
                self._bucket.spend()
            if row.seq == b.end:
                self._finish(b)
        else:
            self._last_seq = row.seq

    def wait_s(self, idle_s: float) -> float:
        """How long the pump may sleep when nothing wakes it: ``idle_s``, or less when the
        throttled backlog gets its next token sooner."""
        if self._backlog is None or not self._limited():
            return idle_s
        assert self._bucket is not None
        return min(idle_s, max(MIN_WAIT_S, self._bucket.wait_s()))
