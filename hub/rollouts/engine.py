"""The rollout engine: staged model rollouts reconciled from what agents report.

A rollout splits its targets into stages (cumulative percentages, e.g. 10 -> 50 -> 100) in a
deterministic order that mixes labs (sha256 of rollout id + agent id). Starting a stage sets each
of its agents' desired state (database row + retained MQTT :class:`~shared.schemas.DesiredModel`
carrying the ``rollout_id``). Agents report :class:`~shared.schemas.ModelEvent` s and statuses;
:meth:`RolloutEngine.handle` (called by the ingest worker after each commit) moves targets along:

* ``downloading`` / ``verifying`` -> ``downloading``; ``activated`` (or a status naming the
  rollout's model) -> ``succeeded``; ``failed`` or an agent-side ``rolled_back`` -> ``failed``;
* no report within ``timeout_s`` of the desired state -> ``timed_out`` (checked by :meth:`tick`).

After every change the current stage is evaluated, failures first:

* failures (``failed`` + ``timed_out``, minus those acknowledged by a resume) above
  ``error_threshold`` x stage size -> ``on_failure``: ``pause``, or ``rollback`` (every agent the
  rollout touched gets its previous model desired again; agents not reached yet are skipped);
* successes >= ``success_threshold`` x (stage size - acknowledged failures) -> the next stage
  starts, or after the last one the rollout completes once nothing is in progress;
* a stage with nothing in progress that reached neither threshold -> ``paused`` with the reason.

Operators pause, resume (acknowledging the stage's current failures), abort (no further stages)
or roll back. Every operator action and automatic decision goes to the audit log; every state
change to the rollout history. The engine takes a clock so tests drive time; it serialises its
work with a lock (one hub process) and ``SELECT ... FOR UPDATE`` on the rollout row (PostgreSQL).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hub import audit
from hub.config import RolloutSection
from hub.db.models import Agent, AgentTag, LabTag, ModelVersion, Rollout, RolloutHistory, RolloutTarget
from hub.db.session import Database
from hub.errors import HubError
from hub.mqtt.publisher import BrokerUnavailable, MqttPublisher
from hub.rollouts.spec import (
    ACTIVE_ROLLOUT_STATES,
    FAILURES,
    IN_PROGRESS,
    WATCHED,
    RolloutRequest,
    RolloutState,
    TargetSpec,
    TargetState,
)
from hub.twin import desired_message
from shared import topics
from shared.logs import kv
from shared.schemas import AgentStatus, ModelEvent, ModelEventKind

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RolloutError(HubError):
    """A rollout request or action the engine refuses; ``status``/``code`` map onto the API error."""


def stage_sizes(n: int, stages: Sequence[int]) -> list[int]:
    """How many of ``n`` targets each cumulative-percentage stage adds (a stage may get 0).

    >>> stage_sizes(500, [10, 50, 100])
    [50, 200, 250]
    """
    bounds = [math.ceil(n * p / 100 - 1e-9) for p in stages]
    return [b - a for a, b in zip([0, *bounds], bounds, strict=False)]


def _order_key(rollout_id: str, agent_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}/{agent_id}".encode()).hexdigest()


class RolloutEngine:
    """Starts, advances, pauses and rolls back rollouts; see the module docstring for the rules.

    Args:
        db: the hub database.
        publisher: publishes the retained desired states.
        public_url: the hub URL agents download bundles from.
        settings: defaults for new rollouts (``rollouts`` config section).
        clock: returns the current UTC time (tests inject a fake one).
    """

    def __init__(
        self,
        db: Database,
        publisher: MqttPublisher,
        public_url: str,
        settings: RolloutSection,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.publisher = publisher
        self.public_url = public_url
        self.settings = settings
        self.clock = clock
        self._lock = threading.RLock()

    # --- operator actions -------------------------------------------------------------------
    def start(self, request: RolloutRequest, actor: str) -> str:
        """Create a rollout and start its first stage; returns the rollout id.

        Raises:
            RolloutError: 404 model not registered; 422 no agent matches the target; 409 some
                targets are already in another running or paused rollout.
            hub.mqtt.publisher.BrokerUnavailable: the desired states could not be published
                (nothing is stored).
        """
        st = self.settings
        stages = request.stages or list(st.default_stages)
        rollout_id = uuid.uuid4().hex[:12]
        now = self.clock()
        with self._lock, self.db.transaction() as s:
            model = self._model(s, request.model_name, request.model_version)
            if model is None:
                raise RolloutError(
                    404,
                    "model_not_found",
                    f"model {request.model_name} {request.model_version} is not registered; "
                    "upload it first (leukonet models upload BUNDLE)",
                )
            agent_ids = self._resolve(s, request.target)
            if not agent_ids:
                raise RolloutError(
                    422, "no_targets", f"no agent matches the target ({request.target.describe()})"
                )
            busy = list(
                s.scalars(
                    select(RolloutTarget.agent_id)
                    .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
                    .where(
                        Rollout.state.in_(ACTIVE_ROLLOUT_STATES),
                        RolloutTarget.agent_id.in_(agent_ids),
                    )
                    .limit(5)
                )
            )
            if busy:
                raise RolloutError(
                    409,
                    "agents_busy",
                    f"agents {', '.join(busy)} are in another running or paused rollout; "
                    "abort or finish it first (leukonet rollout status)",
                )
            rollout = Rollout(
                rollout_id=rollout_id,
                model_name=model.name,
                model_version=model.version,
                state=RolloutState.RUNNING.value,
                target=request.target.model_dump(),
                stages=stages,
                current_stage=0,
                success_threshold=request.success_threshold or st.default_success_threshold,
                error_threshold=(
                    request.error_threshold
                    if request.error_threshold is not None
                    else st.default_error_threshold
                ),
                on_failure=request.on_failure or st.default_on_failure,
                timeout_s=request.timeout_s or st.default_timeout_s,
                acknowledged_failures=0,
                reason="",
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            s.add(rollout)
            agents = {a.agent_id: a for a in s.scalars(select(Agent).where(Agent.agent_id.in_(agent_ids)))}
            ordered = sorted(agent_ids, key=lambda a: _order_key(rollout_id, a))
            sizes = stage_sizes(len(ordered), stages)
            pos = 0
            for stage, size in enumerate(sizes):
                for agent_id in ordered[pos : pos + size]:
                    agent = agents.get(agent_id)
                    prev_name, prev_version = _running_model(agent)
                    s.add(
                        RolloutTarget(
                            rollout_id=rollout_id,
                            agent_id=agent_id,
                            stage=stage,
                            state=TargetState.PENDING.value,
                            previous_model_name=prev_name,
                            previous_model_version=prev_version,
                            detail="",
                            updated_at=now,
                        )
                    )
                pos += size
            self._history(s, rollout, None, RolloutState.RUNNING.value, f"started by {actor}", now)
            audit.record(
                s,
                actor,
                "rollout.start",
                f"rollout/{rollout_id}",
                now,
                model=f"{model.name} {model.version}",
                target=request.target.describe(),
                targets=len(ordered),
                stages=stages,
                success_threshold=rollout.success_threshold,
                error_threshold=rollout.error_threshold,
                on_failure=rollout.on_failure,
                timeout_s=rollout.timeout_s,
            )
            s.flush()
            self._begin_stage(s, rollout, now, first_candidate=0)
            self._evaluate(s, rollout, now)
        log.info(
            kv(
                "rollout_started",
                rollout=rollout_id,
                model=f"{model.name} {model.version}",
                targets=len(ordered),
                stages=",".join(map(str, stages)),
                by=actor,
            )
        )
        return rollout_id

    def pause(self, rollout_id: str, actor: str, reason: str = "") -> None:
        """Stop advancing (running -> paused); agents already told keep going. 409 unless running."""
        self._act(rollout_id, actor, "pause", reason)

    def resume(self, rollout_id: str, actor: str, reason: str = "") -> None:
        """paused -> running. The current stage's failures so far are acknowledged: they no longer
        count towards the error threshold and leave the success threshold's denominator."""
        self._act(rollout_id, actor, "resume", reason)

    def abort(self, rollout_id: str, actor: str, reason: str = "") -> None:
        """running/paused -> aborted: no further stages; agents not reached yet are skipped."""
        self._act(rollout_id, actor, "abort", reason)

    def rollback(self, rollout_id: str, actor: str, reason: str = "") -> None:
        """Any state but rolled_back -> rolled_back: every agent the rollout reached gets its
        previous model desired again; agents not reached yet are skipped."""
        self._act(rollout_id, actor, "rollback", reason)

    def _act(self, rollout_id: str, actor: str, action: str, reason: str) -> None:
        allowed = {
            "pause": (RolloutState.RUNNING.value,),
            "resume": (RolloutState.PAUSED.value,),
            "abort": ACTIVE_ROLLOUT_STATES,
            "rollback": (*ACTIVE_ROLLOUT_STATES, RolloutState.COMPLETED.value, RolloutState.ABORTED.value),
        }[action]
        now = self.clock()
        with self._lock, self.db.transaction() as s:
            rollout = self._locked(s, rollout_id)
            if rollout.state not in allowed:
                raise RolloutError(
                    409,
                    "invalid_state",
                    f"rollout {rollout_id} is {rollout.state}; {action} needs it to be "
                    f"{' or '.join(allowed)}",
                )
            audit.record(s, actor, f"rollout.{action}", f"rollout/{rollout_id}", now, reason=reason)
            note = f"{action} by {actor}" + (f": {reason}" if reason else "")
            if action == "pause":
                self._set_state(s, rollout, RolloutState.PAUSED, note, now)
            elif action == "resume":
                group = self._group_counts(s, rollout)
                rollout.acknowledged_failures = sum(group[f] for f in FAILURES)
                self._set_state(s, rollout, RolloutState.RUNNING, note, now)
                self._evaluate(s, rollout, now)
            elif action == "abort":
                self._skip_pending(s, rollout, now)
                self._set_state(s, rollout, RolloutState.ABORTED, note, now, final=True)
            else:
                self._roll_back(s, rollout, note, now)
        log.info(kv(f"rollout_{action}", rollout=rollout_id, by=actor, reason=reason or "-"))

    # --- reconciliation ---------------------------------------------------------------------
    def handle(self, messages: Iterable[object]) -> int:
        """Apply agents' model events and statuses (already committed by ingest) to their targets.

        Returns how many targets changed. Called by the ingest worker after each batch commit.

        Raises:
            sqlalchemy.exc.SQLAlchemyError / BrokerUnavailable: target updates that were committed
                stay; a stage advance that could not be published is retried by :meth:`tick`.
        """
        reports = [m for m in messages if isinstance(m, (ModelEvent, AgentStatus))]
        if not reports:
            return 0
        now = self.clock()
        changed_rollouts: set[str] = set()
        changed = 0
        with self._lock:
            with self.db.transaction() as s:
                agent_ids = {m.agent_id for m in reports}
                rows = s.execute(
                    select(RolloutTarget, Rollout)
                    .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
                    .where(RolloutTarget.agent_id.in_(agent_ids), RolloutTarget.state.in_(WATCHED))
                    .order_by(Rollout.id)
                ).all()
                by_agent: dict[str, list[tuple[RolloutTarget, Rollout]]] = {}
                for target, rollout in rows:
                    by_agent.setdefault(target.agent_id, []).append((target, rollout))
                for m in reports:
                    for target, rollout in by_agent.get(m.agent_id, []):
                        if self._apply_report(s, rollout, target, m, now):
                            changed += 1
                            changed_rollouts.add(rollout.rollout_id)
            for rollout_id in sorted(changed_rollouts):
                self._evaluate_by_id(rollout_id)
        return changed

    def on_ingest(self, messages: Sequence[object]) -> None:
        """The ingest worker's after-commit hook: :meth:`handle`, with outages logged, not raised.

        The reports are already stored and acknowledged; a target update lost to a database outage
        is caught up by the next status of that agent, a stage advance by the next :meth:`tick`.
        """
        try:
            self.handle(messages)
        except (SQLAlchemyError, BrokerUnavailable, RolloutError) as exc:
            log.error(kv("rollout_reconcile_failed", error=str(exc)[:300], action="next tick retries"))

    def tick(self) -> None:
        """Time out silent targets and re-evaluate every running rollout (retries failed publishes)."""
        now = self.clock()
        with self._lock:
            with self.db.transaction() as s:
                active = list(s.scalars(select(Rollout).where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES))))
                for rollout in active:
                    deadline = now - timedelta(seconds=rollout.timeout_s)
                    for target in s.scalars(
                        select(RolloutTarget).where(
                            RolloutTarget.rollout_id == rollout.rollout_id,
                            RolloutTarget.state.in_(IN_PROGRESS),
                            RolloutTarget.desired_at <= deadline,
                        )
                    ):
                        self._target_state(
                            s,
                            rollout,
                            target,
                            TargetState.TIMED_OUT,
                            f"no report within {rollout.timeout_s} s of the desired state",
                            now,
                        )
                ids = [r.rollout_id for r in active if r.state == RolloutState.RUNNING.value]
            for rollout_id in ids:
                self._evaluate_by_id(rollout_id)

    # --- internals --------------------------------------------------------------------------
    def _evaluate_by_id(self, rollout_id: str) -> None:
        now = self.clock()
        with self.db.transaction() as s:
            self._evaluate(s, self._locked(s, rollout_id), now)

    def _apply_report(
        self, s: Session, rollout: Rollout, target: RolloutTarget, m: ModelEvent | AgentStatus, now: datetime
    ) -> bool:
        model = (m.model_name, m.model_version)
        ours = model == (rollout.model_name, rollout.model_version)
        previous = model == (target.previous_model_name, target.previous_model_version)
        state = target.state
        if isinstance(m, ModelEvent):
            if m.rollout_id is not None and m.rollout_id != rollout.rollout_id:
                return False
            kind = m.event
            if state == TargetState.ROLLING_BACK.value:
                if previous and kind is ModelEventKind.ACTIVATED:
                    return self._target_state(s, rollout, target, TargetState.ROLLED_BACK, m.detail, now)
                if previous and kind is ModelEventKind.FAILED:
                    return self._target_state(
                        s, rollout, target, TargetState.ROLLBACK_FAILED, m.detail or "failed", now
                    )
                return False
            if not ours:
                return False
            if kind in (ModelEventKind.DOWNLOADING, ModelEventKind.VERIFYING):
                if state == TargetState.DESIRED.value:
                    return self._target_state(s, rollout, target, TargetState.DOWNLOADING, kind.value, now)
                return False
            if kind is ModelEventKind.ACTIVATED:
                if state == TargetState.SUCCEEDED.value:
                    return False
                return self._target_state(s, rollout, target, TargetState.SUCCEEDED, m.detail, now)
            # failed, or the agent rolled the new model back on its own
            if state in (*IN_PROGRESS, TargetState.SUCCEEDED.value):
                detail = m.detail or kind.value
                if kind is ModelEventKind.ROLLED_BACK:
                    detail = f"agent rolled back: {detail}"
                return self._target_state(s, rollout, target, TargetState.FAILED, detail, now)
            return False
        # a status names the model the agent runs right now
        if state == TargetState.ROLLING_BACK.value and previous:
            return self._target_state(s, rollout, target, TargetState.ROLLED_BACK, "reported by status", now)
        if ours and state in (*IN_PROGRESS, TargetState.TIMED_OUT.value):
            return self._target_state(
                s, rollout, target, TargetState.SUCCEEDED, "reported running by status", now
            )
        return False

    def _evaluate(self, s: Session, rollout: Rollout, now: datetime) -> None:
        """Apply the thresholds to the current stage; may advance, pause, roll back or complete."""
        while rollout.state == RolloutState.RUNNING.value:
            counts = self._group_counts(s, rollout)
            size = sum(counts.values())
            failures = sum(counts[f] for f in FAILURES) - rollout.acknowledged_failures
            succeeded = counts[TargetState.SUCCEEDED.value]
            in_progress = sum(counts[f] for f in IN_PROGRESS)
            stage_no = rollout.current_stage + 1
            if failures > rollout.error_threshold * size:
                reason = (
                    f"stage {stage_no}: {failures} of {size} agents failed, above the error "
                    f"threshold of {rollout.error_threshold:.0%}"
                )
                audit.record(
                    s,
                    audit.ENGINE_ACTOR,
                    f"rollout.auto_{rollout.on_failure}",
                    f"rollout/{rollout.rollout_id}",
                    now,
                    reason=reason,
                )
                log.warning(
                    kv(
                        "rollout_error_threshold",
                        rollout=rollout.rollout_id,
                        action=rollout.on_failure,
                        failures=failures,
                        size=size,
                    )
                )
                if rollout.on_failure == "rollback":
                    self._roll_back(s, rollout, reason, now)
                else:
                    self._set_state(s, rollout, RolloutState.PAUSED, reason, now)
                return
            needed = math.ceil(rollout.success_threshold * (size - rollout.acknowledged_failures) - 1e-9)
            if succeeded >= needed:
                if self._has_later_stage(s, rollout):
                    self._advance(s, rollout, now, f"stage {stage_no}: {succeeded} of {size} succeeded")
                    continue
                busy = s.scalar(
                    select(RolloutTarget.id)
                    .where(
                        RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.state.in_(IN_PROGRESS)
                    )
                    .limit(1)
                )
                if busy is None:
                    audit.record(
                        s, audit.ENGINE_ACTOR, "rollout.complete", f"rollout/{rollout.rollout_id}", now
                    )
                    self._set_state(
                        s,
                        rollout,
                        RolloutState.COMPLETED,
                        f"last stage: {succeeded} of {size} succeeded",
                        now,
                        final=True,
                    )
                return
            if in_progress == 0:
                reason = (
                    f"stage {stage_no} finished with {succeeded} of {size} agents succeeded, below the "
                    f"success threshold of {rollout.success_threshold:.0%}; resume to accept, or roll back"
                )
                audit.record(
                    s,
                    audit.ENGINE_ACTOR,
                    "rollout.auto_pause",
                    f"rollout/{rollout.rollout_id}",
                    now,
                    reason=reason,
                )
                self._set_state(s, rollout, RolloutState.PAUSED, reason, now)
            return

    def _advance(self, s: Session, rollout: Rollout, now: datetime, why: str) -> None:
        nxt = self._begin_stage(s, rollout, now, first_candidate=rollout.current_stage + 1)
        audit.record(
            s,
            audit.ENGINE_ACTOR,
            "rollout.advance",
            f"rollout/{rollout.rollout_id}",
            now,
            stage=nxt + 1,
            reason=why,
        )
        log.info(kv("rollout_advanced", rollout=rollout.rollout_id, stage=nxt + 1, reason=why))

    def _has_later_stage(self, s: Session, rollout: Rollout) -> bool:
        return (
            s.scalar(
                select(RolloutTarget.id)
                .where(
                    RolloutTarget.rollout_id == rollout.rollout_id,
                    RolloutTarget.stage > rollout.current_stage,
                )
                .limit(1)
            )
            is not None
        )

    def _begin_stage(self, s: Session, rollout: Rollout, now: datetime, first_candidate: int) -> int:
        """Start the first stage >= ``first_candidate`` that has targets; publish its desired states."""
        stage = s.scalar(
            select(RolloutTarget.stage)
            .where(RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.stage >= first_candidate)
            .order_by(RolloutTarget.stage)
            .limit(1)
        )
        if stage is None:
            return rollout.current_stage
        rollout.current_stage = stage
        rollout.acknowledged_failures = 0
        rollout.updated_at = now
        model = self._model(s, rollout.model_name, rollout.model_version)
        if model is None:
            raise RolloutError(
                409, "model_missing", f"model {rollout.model_name} {rollout.model_version} left the registry"
            )
        targets = list(
            s.scalars(
                select(RolloutTarget).where(
                    RolloutTarget.rollout_id == rollout.rollout_id,
                    RolloutTarget.stage == stage,
                    RolloutTarget.state == TargetState.PENDING.value,
                )
            )
        )
        agents = {
            a.agent_id: a
            for a in s.scalars(select(Agent).where(Agent.agent_id.in_([t.agent_id for t in targets])))
        }
        messages: list[tuple[str, bytes]] = []
        for target in targets:
            agent = self._agent_row(s, agents, target.agent_id, now)
            agent.desired_model_name, agent.desired_model_version = model.name, model.version
            agent.desired_set_at = now
            topic, desired = desired_message(self.public_url, target.agent_id, model, rollout.rollout_id, now)
            messages.append((topic, desired.to_json()))
            target.desired_at = now
            if _running_model(agent) == (model.name, model.version):
                self._target_state(
                    s, rollout, target, TargetState.SUCCEEDED, "already running this model", now
                )
            else:
                self._target_state(s, rollout, target, TargetState.DESIRED, "desired state published", now)
        self._history(
            s, rollout, None, f"stage_{stage + 1}", f"stage {stage + 1}: {len(targets)} agents", now
        )
        s.flush()
        self.publisher.publish_many(messages, retain=True)
        return stage

    def _roll_back(self, s: Session, rollout: Rollout, note: str, now: datetime) -> None:
        self._skip_pending(s, rollout, now)
        touched = list(
            s.scalars(
                select(RolloutTarget).where(
                    RolloutTarget.rollout_id == rollout.rollout_id,
                    RolloutTarget.state.in_((*IN_PROGRESS, *FAILURES, TargetState.SUCCEEDED.value)),
                )
            )
        )
        agents = {
            a.agent_id: a
            for a in s.scalars(select(Agent).where(Agent.agent_id.in_([t.agent_id for t in touched])))
        }
        models: dict[tuple[str, str], ModelVersion | None] = {}
        messages: list[tuple[str, bytes]] = []
        for target in touched:
            agent = self._agent_row(s, agents, target.agent_id, now)
            prev_name, prev_version = target.previous_model_name, target.previous_model_version
            if prev_name is None or prev_version is None:
                self._target_state(
                    s,
                    rollout,
                    target,
                    TargetState.ROLLBACK_FAILED,
                    "the agent ran no model before this rollout; it keeps the current one",
                    now,
                )
                continue
            prev = (prev_name, prev_version)
            if prev not in models:
                models[prev] = self._model(s, prev[0], prev[1])
            model = models[prev]
            if model is None:
                self._target_state(
                    s,
                    rollout,
                    target,
                    TargetState.ROLLBACK_FAILED,
                    f"previous model {prev[0]} {prev[1]} is not in the registry; upload it and desire it",
                    now,
                )
                continue
            agent.desired_model_name, agent.desired_model_version = model.name, model.version
            agent.desired_set_at = now
            topic, desired = desired_message(self.public_url, target.agent_id, model, rollout.rollout_id, now)
            messages.append((topic, desired.to_json()))
            target.desired_at = now
            if _running_model(agent) == prev:
                self._target_state(
                    s, rollout, target, TargetState.ROLLED_BACK, "already runs the previous model", now
                )
            else:
                self._target_state(
                    s, rollout, target, TargetState.ROLLING_BACK, f"desired back to {prev[0]} {prev[1]}", now
                )
        self._set_state(s, rollout, RolloutState.ROLLED_BACK, note, now, final=True)
        s.flush()
        self.publisher.publish_many(messages, retain=True)

    def _skip_pending(self, s: Session, rollout: Rollout, now: datetime) -> None:
        for target in s.scalars(
            select(RolloutTarget).where(
                RolloutTarget.rollout_id == rollout.rollout_id,
                RolloutTarget.state == TargetState.PENDING.value,
            )
        ):
            self._target_state(
                s, rollout, target, TargetState.SKIPPED, f"rollout {rollout.state} before its stage", now
            )

    def _group_counts(self, s: Session, rollout: Rollout) -> Counter[str]:
        counts: Counter[str] = Counter()
        for state in s.scalars(
            select(RolloutTarget.state).where(
                RolloutTarget.rollout_id == rollout.rollout_id, RolloutTarget.stage == rollout.current_stage
            )
        ):
            counts[state] += 1
        return counts

    def _set_state(
        self,
        s: Session,
        rollout: Rollout,
        state: RolloutState,
        reason: str,
        now: datetime,
        final: bool = False,
    ) -> None:
        rollout.state = state.value
        rollout.reason = reason
        rollout.updated_at = now
        if final:
            rollout.finished_at = now
        self._history(s, rollout, None, state.value, reason, now)

    def _target_state(
        self,
        s: Session,
        rollout: Rollout,
        target: RolloutTarget,
        state: TargetState,
        detail: str,
        now: datetime,
    ) -> bool:
        target.state = state.value
        target.detail = detail[:4096]
        if state.value in (*FAILURES, TargetState.ROLLBACK_FAILED.value):
            target.failure = detail[:4096]
        target.updated_at = now
        self._history(s, rollout, target.agent_id, state.value, detail, now)
        return True

    @staticmethod
    def _history(
        s: Session, rollout: Rollout, agent_id: str | None, state: str, detail: str, now: datetime
    ) -> None:
        s.add(
            RolloutHistory(
                rollout_id=rollout.rollout_id, agent_id=agent_id, state=state, detail=detail[:4096], at=now
            )
        )

    @staticmethod
    def _agent_row(s: Session, cache: dict[str, Agent], agent_id: str, now: datetime) -> Agent:
        agent = cache.get(agent_id)
        if agent is None:
            agent = Agent(agent_id=agent_id, lab="", state="unknown", vitals={}, created_at=now)
            s.add(agent)
            cache[agent_id] = agent
        return agent

    @staticmethod
    def _model(s: Session, name: str, version: str) -> ModelVersion | None:
        return s.scalar(
            select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
        )

    @staticmethod
    def _locked(s: Session, rollout_id: str) -> Rollout:
        rollout = s.scalar(select(Rollout).where(Rollout.rollout_id == rollout_id).with_for_update())
        if rollout is None:
            raise RolloutError(
                404,
                "rollout_not_found",
                f"rollout {rollout_id!r} does not exist; list them with `leukonet rollout list`",
            )
        return rollout

    @staticmethod
    def _resolve(s: Session, target: TargetSpec) -> list[str]:
        """The agent ids a target spec selects (sorted, unique)."""
        if target.agents:
            for agent_id in target.agents:
                topics.validate_agent_id(agent_id)
            return sorted(set(target.agents))
        q = select(Agent.agent_id)
        if target.labs:
            q = q.where(Agent.lab.in_(target.labs))
        elif target.tags:
            tagged = select(AgentTag.agent_id).where(AgentTag.tag.in_(target.tags))
            labs = select(LabTag.lab).where(LabTag.tag.in_(target.tags))
            q = q.where(or_(Agent.agent_id.in_(tagged), Agent.lab.in_(labs)))
        return sorted(set(s.scalars(q)))


def _running_model(agent: Agent | None) -> tuple[str | None, str | None]:
    """The model an agent reports running (None, None when unknown)."""
    if agent is None or not agent.model_name or not agent.model_version:
        return None, None
    return agent.model_name, agent.model_version
