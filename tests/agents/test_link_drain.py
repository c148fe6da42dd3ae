"""The backlog drain (agents/drain.py) and the link's pump that uses it, on a fake clock.

:class:`BacklogDrain` is driven directly over a real outbox: the rate holds while the outbox is
deep, there is no limit when it is shallow or when no rate is set, live rows are never held back,
and nothing is lost. The link tests run the real pump thread against a fake paho client whose
PUBACKs come only when the test sends them: a row leaves the outbox on its PUBACK and not before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agents.config import MqttConfig
from agents.drain import BacklogDrain, TokenBucket
from agents.link import Link
from agents.outbox import Outbox, OutboxRow
from shared.schemas import AgentStatus, ClassificationResult, Timings
from tests.agents.helpers import wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def result(i: int, agent_id: str = "a1") -> ClassificationResult:
    return ClassificationResult(
        agent_id=agent_id,
        image_name=f"{i}.png",
        image_sha256=f"{i:064x}",
        label="ALL",
        confidence=0.9,
        probabilities={"ALL": 0.9, "normal": 0.1},
        model_name="m",
        model_version="1.0.0",
        timings=Timings(decode_ms=1, preprocess_ms=1, inference_ms=1, total_ms=3),
    )


def fill(box: Outbox, start: int, n: int) -> list[int]:
    return box.put_many([(result(i), None) for i in range(start, start + n)])


@pytest.fixture
def box(tmp_path: Path) -> Any:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    yield outbox
    outbox.close()


def take(drain: BacklogDrain, room: int = 1000) -> list[OutboxRow]:
    """What the pump does with one window: hand every row out (no PUBACK yet)."""
    rows = drain.next_rows(room)
    for row in rows:
        drain.sent(row)
    return rows


# --- BacklogDrain -----------------------------------------------------------------------------


def test_a_shallow_outbox_goes_in_order_without_limit(box):
    seqs = fill(box, 0, 40)
    drain = BacklogDrain(box, rate_per_s=1.0, backlog_rows=40, clock=FakeClock())
    assert [r.seq for r in take(drain, 25)] == seqs[:25]  # the window, not the rate, is the limit
    assert [r.seq for r in take(drain, 25)] == seqs[25:]
    assert not drain.draining and drain.wait_s(0.5) == 0.5


def test_without_a_rate_a_deep_outbox_goes_in_order_as_fast_as_the_window(box):
    seqs = fill(box, 0, 500)
    drain = BacklogDrain(box, rate_per_s=0.0, backlog_rows=10, clock=FakeClock())
    out: list[int] = []
    while rows := take(drain, 100):
        out += [r.seq for r in rows]
    assert out == seqs and not drain.draining


def test_the_rate_holds_while_the_outbox_is_deep(box):
    fill(box, 0, 2000)
    clock = FakeClock()
    drain = BacklogDrain(box, rate_per_s=50.0, backlog_rows=100, clock=clock)
    first = take(drain)
    assert len(first) == 5  # the bucket starts with a tenth of a second's worth
    assert drain.draining and take(drain) == []  # no time passed: no more
    assert 0 < drain.wait_s(0.5) <= 0.02 + 1e-9  # the pump sleeps until the next token
    sent = [r.seq for r in first]
    for step in range(1, 1001):  # 10 s in 10 ms steps, nothing acknowledged (the outbox stays deep)
        clock.advance(0.01)
        sent += [r.seq for r in take(drain)]
        if step % 100 == 0:
            seconds = step / 100
            assert 50 * seconds - 1 <= len(sent) <= 5 + 50 * seconds, (seconds, len(sent))
    assert sent == sorted(sent) and len(set(sent)) == len(sent)  # the backlog goes oldest first, once


def test_live_rows_are_never_held_back(box):
    backlog = fill(box, 0, 300)
    clock = FakeClock()
    drain = BacklogDrain(box, rate_per_s=10.0, backlog_rows=100, clock=clock)
    assert [r.seq for r in take(drain)] == backlog[:1]  # burst: one row
    assert take(drain) == []
    live = fill(box, 300, 3)  # classified now, while the backlog drains
    assert [r.seq for r in take(drain)] == live  # at once, though the bucket is empty
    clock.advance(0.1)
    more = fill(box, 303, 2)
    # live rows first, then the one backlog row the tenth of a second allows
    assert [r.seq for r in take(drain)] == [*more, backlog[1]]


def test_a_live_row_goes_first_even_when_the_window_is_nearly_full(box):
    fill(box, 0, 300)
    drain = BacklogDrain(box, rate_per_s=1000.0, backlog_rows=100, clock=FakeClock())
    take(drain, 1)
    live = fill(box, 300, 1)
    assert [r.seq for r in take(drain, 1)] == live  # one slot left: the live row gets it


def test_when_the_outbox_is_shallow_again_the_rest_goes_at_once_then_in_order(box):
    backlog = fill(box, 0, 150)
    clock = FakeClock()
    drain = BacklogDrain(box, rate_per_s=10.0, backlog_rows=100, clock=clock)
    out: list[int] = []
    while box.depth() > 100:
        rows = take(drain)
        box.ack_many([r.seq for r in rows])  # PUBACK at once
        out += [r.seq for r in rows]
        clock.advance(0.1)
    assert out == backlog[:50] and drain.draining  # 50 rows took 5 s at 10/s
    rest = take(drain)  # 100 deep: no limit now
    assert [r.seq for r in rest] == backlog[50:] and not drain.draining
    box.ack_many([r.seq for r in rest])
    after = fill(box, 152, 3)
    assert [r.seq for r in take(drain)] == after and not drain.draining  # plain order again


def test_nothing_is_lost_and_rows_leave_only_on_puback(box):
    fill(box, 0, 1200)
    clock = FakeClock()
    drain = BacklogDrain(box, rate_per_s=200.0, backlog_rows=100, clock=clock)
    published: list[str] = []
    inflight: list[int] = []
    i = 1200
    for step in range(2000):
        depth = box.depth()
        rows = take(drain, 100 - len(inflight))
        assert box.depth() == depth  # handing a row out deletes nothing
        published += [r.result_id for r in rows]
        inflight += [r.seq for r in rows]
        if step % 3 == 0:  # a PUBACK burst now and then
            box.ack_many(inflight)
            inflight = []
        if step % 10 == 0 and i < 1300:
            fill(box, i, 2)  # live results keep coming
            i += 2
        clock.advance(0.01)
        if box.depth() == 0 and i >= 1300:
            break
    assert box.depth() == 0 and not drain.draining
    assert len(published) == len(set(published)) == 1300


def test_a_new_outage_marks_a_new_backlog(box):
    fill(box, 0, 20)
    clock = FakeClock()
    drain = BacklogDrain(box, rate_per_s=10.0, backlog_rows=10, clock=clock)
    box.ack_many([r.seq for r in take(drain)])  # rows 0..0: burst of one
    while box.depth():
        clock.advance(0.1)
        box.ack_many([r.seq for r in take(drain)])
    assert not drain.draining
    second = fill(box, 20, 30)  # the broker was away; 30 rows piled up
    assert [r.seq for r in take(drain)] == second[:1] and drain.draining


def test_bad_settings_are_refused(box):
    with pytest.raises(ValueError, match="drain_rate_per_s"):
        BacklogDrain(box, rate_per_s=-1.0)
    with pytest.raises(ValueError, match="backlog_rows"):
        BacklogDrain(box, rate_per_s=1.0, backlog_rows=0)
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(0.0, 1.0)


# --- the link's pump with a fake paho client -----------------------------------------------------


class Info:
    def __init__(self, mid: int) -> None:
        self.mid, self.rc = mid, mqtt.MQTT_ERR_SUCCESS

    def wait_for_publish(self, timeout: float | None = None) -> None:
        pass

    def is_published(self) -> bool:
        return True


class FakeClient:
    """The part of a paho client the link uses; connects at once, PUBACKs only when :meth:`puback` says."""

    def __init__(self, real: mqtt.Client) -> None:
        self.on_connect, self.on_publish = real.on_connect, real.on_publish
        self._lock = threading.Lock()
        self._mid = 0
        #: results published: (mid, result_id), in publishing order
        self.results: list[tuple[int, str]] = []

    def connect_async(self, *args: Any, **kwargs: Any) -> None:
        pass

    def loop_start(self) -> None:
        self.on_connect(
            self, None, SimpleNamespace(session_present=False), SimpleNamespace(is_failure=False), None
        )

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        pass

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Info:
        with self._lock:
            self._mid += 1
            if topic.endswith("/results"):
                self.results.append((self._mid, ClassificationResult.model_validate_json(payload).image_name))
            return Info(self._mid)

    def puback(self, mids: list[int]) -> None:
        for mid in mids:
            self.on_publish(self, None, mid, SimpleNamespace(is_failure=False), None)

    def names(self) -> list[str]:
        with self._lock:
            return [name for _, name in self.results]

    def mids(self) -> list[int]:
        with self._lock:
            return [mid for mid, _ in self.results]

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass

    def reinitialise(self, *args: Any, **kwargs: Any) -> None:
        pass


def make_link(box: Outbox, **kw: Any) -> tuple[Link, FakeClient]:
    link = Link(
        "a1",
        MqttConfig(host="127.0.0.1", port=1),
        box,
        lambda state: AgentStatus(agent_id="a1", state=state),
        lambda d: None,
        status_interval_s=3600,
        **kw,
    )
    fake = FakeClient(link.client)
    link.client = fake  # type: ignore[assignment]
    return link, fake


def test_the_link_drains_at_the_rate_sends_live_rows_at_once_and_deletes_on_puback(box):
    fill(box, 0, 300)
    clock = FakeClock()
    link, fake = make_link(box, drain_rate_per_s=20.0, backlog_rows=50, clock=clock)
    link.start()
    try:
        wait_until(lambda: len(fake.results) == 2, 5)  # the burst: a tenth of a second at 20/s
        time.sleep(0.3)  # ~30 pump wake-ups on a frozen clock: nothing more
        assert fake.names() == ["0.png", "1.png"] and link.drain.draining
        assert box.depth() == 300  # published is not acknowledged
        fake.puback(fake.mids())
        wait_until(lambda: box.depth() == 298, 5)
        box.put(result(1000))  # a live result
        link.notify_outbox()
        wait_until(lambda: len(fake.results) == 3, 5)
        assert fake.names()[-1] == "1000.png"  # not held back by the empty bucket
        clock.advance(0.1)
        wait_until(lambda: len(fake.results) == 5, 5)
        assert fake.names()[-2:] == ["2.png", "3.png"]  # then the backlog, oldest first
        time.sleep(0.2)
        assert len(fake.results) == 5 and box.depth() == 299
    finally:
        link.stop()


def depth_is(box: Outbox, n: int) -> Callable[[], bool]:
    return lambda: box.depth() == n


def more_than(fake: FakeClient, n: int) -> Callable[[], bool]:
    return lambda: len(fake.results) > n


def test_the_link_without_a_rate_publishes_in_order_and_deletes_only_acked_rows(box):
    fill(box, 0, 250)
    link, fake = make_link(box, window=100)
    link.start()
    try:
        wait_until(lambda: len(fake.results) == 100, 5)
        time.sleep(0.2)
        assert len(fake.results) == 100 and box.depth() == 250  # the window is full, nothing acked
        acked = 0
        while box.depth():
            mids = fake.mids()
            fake.puback(mids[acked:])
            acked = len(mids)
            wait_until(depth_is(box, 250 - acked), 5)
            if box.depth():
                wait_until(more_than(fake, acked), 5)
        assert fake.names() == [f"{i}.png" for i in range(250)] and not link.drain.draining
    finally:
        link.stop()
