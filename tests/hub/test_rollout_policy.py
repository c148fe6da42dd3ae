"""The rollout rules without a database: thresholds, staging and report transitions are pure."""

from __future__ import annotations

import pytest

from hub.rollouts.policy import (
    Advance,
    Complete,
    Pause,
    RollBack,
    StageCounts,
    Thresholds,
    Wait,
    decide,
    stage_sizes,
    staged,
    transition,
)
from hub.rollouts.spec import TargetState
from shared.schemas import AgentState, AgentStatus, ModelEvent, ModelEventKind

PAUSE = Thresholds(success_threshold=0.9, error_threshold=0.2, on_failure="pause")
ROLLBACK = Thresholds(success_threshold=0.9, error_threshold=0.2, on_failure="rollback")


def counts(size, succeeded=0, failed=0, in_progress=0, acknowledged=0):
    return StageCounts(size, succeeded, failed, in_progress, acknowledged)


@pytest.mark.parametrize(
    ("c", "rules", "later", "busy", "kind", "action"),
    [
        (counts(10, succeeded=9, in_progress=1), PAUSE, True, True, Advance, "rollout.advance"),
        (counts(10, succeeded=9, in_progress=1), PAUSE, False, True, Wait, ""),
        (counts(10, succeeded=10), PAUSE, False, False, Complete, "rollout.complete"),
        (counts(10, succeeded=5, failed=3, in_progress=2), PAUSE, True, True, Pause, "rollout.auto_pause"),
        (
            counts(10, succeeded=5, failed=3, in_progress=2),
            ROLLBACK,
            True,
            True,
            RollBack,
            "rollout.auto_rollback",
        ),
        (
            counts(10, succeeded=5, failed=2, in_progress=3),
            PAUSE,
            True,
            True,
            Wait,
            "",
        ),  # 2 = 20 %: not above
        (counts(10, succeeded=8, failed=2), PAUSE, True, False, Pause, "rollout.auto_pause"),  # below success
        # a resume acknowledged 3 failures: they leave both the error count and the success denominator
        (counts(10, succeeded=7, failed=3, acknowledged=3), PAUSE, True, True, Advance, "rollout.advance"),
        (counts(0), PAUSE, True, False, Advance, "rollout.advance"),  # an empty stage passes
    ],
)
def test_decide(c, rules, later, busy, kind, action):
    d = decide(c, rules, stage_no=2, later_stage=later, busy=busy)
    assert type(d) is kind and d.audit_action == action
    if kind in (Pause, RollBack):
        assert d.reason.startswith("stage 2")


def test_error_reason_names_the_numbers():
    d = decide(counts(10, failed=3, in_progress=7), PAUSE, stage_no=1, later_stage=True, busy=True)
    assert d.reason == "stage 1: 3 of 10 agents failed, above the error threshold of 20%"


def test_stage_sizes_and_staging_are_deterministic_and_complete():
    assert stage_sizes(500, [10, 50, 100]) == [50, 200, 250]
    assert stage_sizes(3, [10, 50, 100]) == [1, 1, 1]
    agents = [f"a{i}" for i in range(20)]
    plan = staged("r1", agents, [10, 50, 100])
    assert sorted(a for a, _ in plan) == sorted(agents)
    assert [sum(1 for _, st in plan if st == k) for k in range(3)] == [2, 8, 10]
    assert plan == staged("r1", list(reversed(agents)), [10, 50, 100])
    assert plan != staged("r2", agents, [10, 50, 100])


def event(kind, version="2.0.0", rollout_id="r1", detail=""):
    return ModelEvent(
        agent_id="a1", event=kind, model_name="m", model_version=version, rollout_id=rollout_id, detail=detail
    )


def step(report, state):
    return transition(
        report, rollout_id="r1", rollout_model=("m", "2.0.0"), previous_model=("m", "1.0.0"), state=state
    )


def test_transitions():
    assert step(event(ModelEventKind.DOWNLOADING), "desired") == (TargetState.DOWNLOADING, "downloading")
    assert step(event(ModelEventKind.DOWNLOADING), "downloading") is None
    assert step(event(ModelEventKind.ACTIVATED, detail="ok"), "downloading") == (TargetState.SUCCEEDED, "ok")
    assert step(event(ModelEventKind.ACTIVATED), "succeeded") is None
    assert step(event(ModelEventKind.FAILED, detail="bad sig"), "desired") == (TargetState.FAILED, "bad sig")
    assert step(event(ModelEventKind.ROLLED_BACK, detail="smoke"), "succeeded") == (
        TargetState.FAILED,
        "agent rolled back: smoke",
    )
    assert step(event(ModelEventKind.ACTIVATED, rollout_id="other"), "desired") is None
    assert step(event(ModelEventKind.ACTIVATED, version="1.0.0"), "rolling_back") == (
        TargetState.ROLLED_BACK,
        "",
    )
    assert step(event(ModelEventKind.FAILED, version="1.0.0"), "rolling_back") == (
        TargetState.ROLLBACK_FAILED,
        "failed",
    )
    status = AgentStatus(agent_id="a1", state=AgentState.ONLINE, model_name="m", model_version="2.0.0")
    assert step(status, "timed_out") == (TargetState.SUCCEEDED, "reported running by status")
    old = AgentStatus(agent_id="a1", state=AgentState.ONLINE, model_name="m", model_version="1.0.0")
    assert step(old, "rolling_back") == (TargetState.ROLLED_BACK, "reported by status")
    assert step(old, "desired") is None
