"""The rollout rules as pure functions: no database, no clock, no broker.

:func:`decide` applies the thresholds to the current stage's counts (failures first):

* unacknowledged failures above ``error_threshold`` x stage size -> :class:`RollBack` or
  :class:`Pause`, as ``on_failure`` says;
* successes >= ``success_threshold`` x (stage size - acknowledged failures) -> :class:`Advance`
  when a later stage has targets, else :class:`Complete` once nothing in the rollout is in
  progress (else :class:`Wait`);
* a stage with nothing in progress that reached neither threshold -> :class:`Pause`;
* otherwise :class:`Wait`.

:func:`transition` says what an agent's report does to its target (or nothing).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from hub.rollouts.spec import IN_PROGRESS, TargetState
from shared.schemas import AgentStatus, ModelEvent, ModelEventKind


@dataclass(frozen=True)
class StageCounts:
    """The current stage's targets by outcome."""

    size: int
    succeeded: int
    failed: int  # failed + timed out, acknowledged ones included
    in_progress: int
    acknowledged: int = 0  # failures accepted by a resume


@dataclass(frozen=True)
class Thresholds:
    success_threshold: float
    error_threshold: float
    on_failure: str  # "pause" | "rollback"


@dataclass(frozen=True)
class Decision:
    """What the engine does next; ``audit_action`` is the audit log entry it records (if any)."""

    reason: str = ""
    audit_action: str = ""


class Wait(Decision):
    """Nothing to do until more reports arrive."""


class Advance(Decision):
    """Start the next stage that has targets."""


class Complete(Decision):
    """The last stage succeeded and nothing is in progress."""


class Pause(Decision):
    """Stop advancing; an operator decides."""


class RollBack(Decision):
    """Give every agent the rollout reached its previous model again."""


def decide(
    counts: StageCounts, rules: Thresholds, *, stage_no: int, later_stage: bool, busy: bool
) -> Decision:
    """The decision for stage ``stage_no`` (1-based) of a running rollout.

    Args:
        counts: the current stage's targets by outcome.
        rules: the rollout's thresholds and ``on_failure``.
        later_stage: a later stage has targets.
        busy: some target of the rollout (any stage) is still in progress.
    """
    failures = counts.failed - counts.acknowledged
    if failures > rules.error_threshold * counts.size:
        reason = (
            f"stage {stage_no}: {failures} of {counts.size} agents failed, above the error "
            f"threshold of {rules.error_threshold:.0%}"
        )
        action = f"rollout.auto_{rules.on_failure}"
        return RollBack(reason, action) if rules.on_failure == "rollback" else Pause(reason, action)
    needed = math.ceil(rules.success_threshold * (counts.size - counts.acknowledged) - 1e-9)
    if counts.succeeded >= needed:
        done = f"{counts.succeeded} of {counts.size} succeeded"
        if later_stage:
            return Advance(f"stage {stage_no}: {done}", "rollout.advance")
        if busy:
            return Wait()
        return Complete(f"last stage: {done}", "rollout.complete")
    if counts.in_progress == 0:
        return Pause(
            f"stage {stage_no} finished with {counts.succeeded} of {counts.size} agents succeeded, below the "
            f"success threshold of {rules.success_threshold:.0%}; resume to accept, or roll back",
            "rollout.auto_pause",
        )
    return Wait()


def stage_sizes(n: int, stages: Sequence[int]) -> list[int]:
    """How many of ``n`` targets each cumulative-percentage stage adds (a stage may get 0).

    >>> stage_sizes(500, [10, 50, 100])
    [50, 200, 250]
    """
    bounds = [math.ceil(n * p / 100 - 1e-9) for p in stages]
    return [b - a for a, b in zip([0, *bounds], bounds, strict=False)]


def staged(rollout_id: str, agent_ids: Sequence[str], stages: Sequence[int]) -> list[tuple[str, int]]:
    """``(agent_id, stage)`` for every target: a deterministic order that mixes labs (sha256 of
    rollout id + agent id), cut by :func:`stage_sizes`."""
    ordered = sorted(agent_ids, key=lambda a: hashlib.sha256(f"{rollout_id}/{a}".encode()).hexdigest())
    out: list[tuple[str, int]] = []
    pos = 0
    for stage, size in enumerate(stage_sizes(len(ordered), stages)):
        out += [(agent_id, stage) for agent_id in ordered[pos : pos + size]]
        pos += size
    return out


ModelRef = tuple[str | None, str | None]


def transition(
    report: ModelEvent | AgentStatus,
    *,
    rollout_id: str,
    rollout_model: ModelRef,
    previous_model: ModelRef,
    state: str,
) -> tuple[TargetState, str] | None:
    """The new state and detail of a target in ``state`` after ``report``; None when it changes nothing.

    * ``downloading`` / ``verifying`` -> ``downloading``; ``activated`` (or a status naming the
      rollout's model) -> ``succeeded``; ``failed`` or an agent-side ``rolled_back`` -> ``failed``;
    * while rolling back: the previous model ``activated`` (or reported by status) ->
      ``rolled_back``, its ``failed`` -> ``rollback_failed``.
    """
    model = (report.model_name, report.model_version)
    ours = model == rollout_model
    previous = model == previous_model
    if isinstance(report, ModelEvent):
        if report.rollout_id is not None and report.rollout_id != rollout_id:
            return None
        kind = report.event
        if state == TargetState.ROLLING_BACK.value:
            if previous and kind is ModelEventKind.ACTIVATED:
                return TargetState.ROLLED_BACK, report.detail
            if previous and kind is ModelEventKind.FAILED:
                return TargetState.ROLLBACK_FAILED, report.detail or "failed"
            return None
        if not ours:
            return None
        if kind in (ModelEventKind.DOWNLOADING, ModelEventKind.VERIFYING):
            return (TargetState.DOWNLOADING, kind.value) if state == TargetState.DESIRED.value else None
        if kind is ModelEventKind.ACTIVATED:
            return None if state == TargetState.SUCCEEDED.value else (TargetState.SUCCEEDED, report.detail)
        # failed, or the agent rolled the new model back on its own
        if state in (*IN_PROGRESS, TargetState.SUCCEEDED.value):
            detail = report.detail or kind.value
            if kind is ModelEventKind.ROLLED_BACK:
                detail = f"agent rolled back: {detail}"
            return TargetState.FAILED, detail
        return None
    # a status names the model the agent runs right now
    if state == TargetState.ROLLING_BACK.value and previous:
        return TargetState.ROLLED_BACK, "reported by status"
    if ours and state in (*IN_PROGRESS, TargetState.TIMED_OUT.value):
        return TargetState.SUCCEEDED, "reported running by status"
    return None
