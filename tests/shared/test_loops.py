"""Supervised loops: a loop that raises is restarted and counted; health sees dead and idle loops."""

from __future__ import annotations

import threading

from shared.loops import Loops
from tests.conftest import wait_until


def test_a_crashing_loop_is_restarted_counted_and_ends_when_its_target_returns():
    loops = Loops()
    stop = threading.Event()
    runs: list[int] = []

    def target() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise RuntimeError(f"bug number {len(runs)}")
        loops.beat("worker")

    thread = loops.spawn("worker", target, stop, backoff_s=0.01)
    thread.join(5)
    assert not thread.is_alive() and len(runs) == 3
    state = loops.snapshot()["worker"]
    assert state["restarts"] == 2 and state["alive"] is False
    assert state["last_activity_age_s"] is not None
    assert loops.dead() == ["worker"]


def test_stop_ends_the_back_off_and_watch_reports_foreign_threads():
    loops = Loops()
    stop = threading.Event()
    thread = loops.spawn("always-broken", lambda: 1 / 0, stop, backoff_s=60)
    assert wait_until(lambda: loops.snapshot()["always-broken"]["restarts"] == 1)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    flag = {"alive": True}
    loops.watch("paho", lambda: flag["alive"])
    assert loops.snapshot()["paho"] == {"alive": True, "restarts": 0, "last_activity_age_s": None}
    flag["alive"] = False
    assert "paho" in loops.dead()


def test_activity_age_follows_the_clock():
    now = [100.0]
    loops = Loops(clock=lambda: now[0])
    loops.beat("writer")
    now[0] = 107.5
    assert loops.snapshot()["writer"]["last_activity_age_s"] == 7.5
