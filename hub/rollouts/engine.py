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
change to the rollout history. The engine takes a clock so tests drive time. Within one process it
serialises its work with a lock; across processes (N ``leukonet hub ingest`` workers, each
reconciling and ticking) with row locks on PostgreSQL: ``SELECT ... FOR UPDATE`` on the rollout row
around every decision, and on the target rows a report or a timeout changes, taken in (rollout,
target) order so that workers wait for each other instead of deadlocking.

The rules themselves are pure functions in :mod:`hub.rollouts.policy` (thresholds, staging, report
transitions); the rows and their history in :mod:`hub.rollouts.store`. This module runs them in
transactions and publishes the desired states.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hub import audit
from hub.config import RolloutSection
from hub.db.models import Rollout, RolloutTarget
from hub.db.session import Database
from hub.mqtt.publisher import BrokerUnavailable, MqttPublisher
from hub.rollouts import store
from hub.rollouts.policy import Advance, Complete, Pause, RollBack, Thresholds, decide, staged, transition
from hub.rollouts.spec import (
    ACTIVE_ROLLOUT_STATES,
    IN_PROGRESS,
    WATCHED,
    RolloutRequest,
    RolloutState,
    TargetState,
)
from hub.rollouts.stages import StagePublisher
from hub.rollouts.store import RolloutError
from shared.clock import Clock, utcnow
from shared.logs import kv
from shared.schemas import AgentStatus, ModelEvent

log = logging.getLogger(__name__)

__all__ = ["RolloutEngine", "RolloutError"]


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
        self.stages = StagePublisher(publisher, public_url)
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
            model = store.model_row(s, request.model_name, request.model_version)
            if model is None:
                raise RolloutError(
                    404,
                    "model_not_found",
                    f"model {request.model_name} {request.model_version} is not registered; "
                    "upload it first (leukonet models upload BUNDLE)",
                )
            agent_ids = store.resolve_targets(s, request.target)
            if not agent_ids:
                raise RolloutError(
                    422, "no_targets", f"no agent matches the target ({request.target.describe()})"
                )
            busy = store.busy_agents(s, agent_ids)
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
            agents = store.agents_by_id(s, agent_ids)
            plan = staged(rollout_id, agent_ids, stages)
            for agent_id, stage in plan:
                prev_name, prev_version = store.running_model(agents.get(agent_id))
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
            store.history(s, rollout, None, RolloutState.RUNNING.value, f"started by {actor}", now)
            audit.record(
                s,
                actor,
                "rollout.start",
                f"rollout/{rollout_id}",
                now,
                model=f"{model.name} {model.version}",
                target=request.target.describe(),
                targets=len(plan),
                stages=stages,
                success_threshold=rollout.success_threshold,
                error_threshold=rollout.error_threshold,
                on_failure=rollout.on_failure,
                timeout_s=rollout.timeout_s,
            )
            s.flush()
            self.stages.begin(s, rollout, now, first_candidate=0)
            self._evaluate(s, rollout, now)
        log.info(
            kv(
                "rollout_started",
                rollout=rollout_id,
                model=f"{model.name} {model.version}",
                targets=len(plan),
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
            rollout = store.locked(s, rollout_id)
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
                store.set_rollout_state(s, rollout, RolloutState.PAUSED, note, now)
            elif action == "resume":
                rollout.acknowledged_failures = store.stage_counts(s, rollout).failed
                store.set_rollout_state(s, rollout, RolloutState.RUNNING, note, now)
                self._evaluate(s, rollout, now)
            elif action == "abort":
                store.skip_pending(s, rollout, now)
                store.set_rollout_state(s, rollout, RolloutState.ABORTED, note, now, final=True)
            else:
                self.stages.roll_back(s, rollout, note, now)
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
                # Another ingest worker may be applying a report of the same agent right now (a
                # shared subscription spreads one agent's messages over the workers): lock the
                # targets, so a transition starts from the committed state and never overwrites a
                # newer one or repeats it. Locks are taken in (rollout, target) order, as tick does.
                rows = s.execute(
                    select(RolloutTarget, Rollout)
                    .join(Rollout, Rollout.rollout_id == RolloutTarget.rollout_id)
                    .where(RolloutTarget.agent_id.in_(agent_ids), RolloutTarget.state.in_(WATCHED))
                    .order_by(Rollout.id, RolloutTarget.id)
                    .with_for_update(of=RolloutTarget)
                ).all()
                by_agent: dict[str, list[tuple[RolloutTarget, Rollout]]] = {}
                for target, rollout in rows:
                    by_agent.setdefault(target.agent_id, []).append((target, rollout))
                for m in reports:
                    for target, rollout in by_agent.get(m.agent_id, []):
                        change = transition(
                            m,
                            rollout_id=rollout.rollout_id,
                            rollout_model=(rollout.model_name, rollout.model_version),
                            previous_model=(target.previous_model_name, target.previous_model_version),
                            state=target.state,
                        )
                        if change is not None:
                            store.set_target_state(s, rollout, target, change[0], change[1], now)
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
                active = list(
                    s.scalars(
                        select(Rollout).where(Rollout.state.in_(ACTIVE_ROLLOUT_STATES)).order_by(Rollout.id)
                    )
                )
                for rollout in active:
                    deadline = now - timedelta(seconds=rollout.timeout_s)
                    # locked, and re-checked by PostgreSQL after a concurrent commit: a target another
                    # worker has just moved on (an agent's report) is no longer timed out
                    overdue = s.scalars(
                        select(RolloutTarget)
                        .where(
                            RolloutTarget.rollout_id == rollout.rollout_id,
                            RolloutTarget.state.in_(IN_PROGRESS),
                            RolloutTarget.desired_at <= deadline,
                        )
                        .order_by(RolloutTarget.id)
                        .with_for_update()
                    ).all()
                    for target in overdue:
                        store.set_target_state(
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
            self._evaluate(s, store.locked(s, rollout_id), now)

    def _evaluate(self, s: Session, rollout: Rollout, now: datetime) -> None:
        """Apply :func:`hub.rollouts.policy.decide` to the current stage until it says wait."""
        rules = Thresholds(rollout.success_threshold, rollout.error_threshold, rollout.on_failure)
        while rollout.state == RolloutState.RUNNING.value:
            counts = store.stage_counts(s, rollout)
            decision = decide(
                counts,
                rules,
                stage_no=rollout.current_stage + 1,
                later_stage=store.has_later_stage(s, rollout),
                busy=store.is_busy(s, rollout),
            )
            subject = f"rollout/{rollout.rollout_id}"
            if isinstance(decision, Advance):
                nxt = self.stages.begin(s, rollout, now, first_candidate=rollout.current_stage + 1)
                audit.record(
                    s,
                    audit.ENGINE_ACTOR,
                    decision.audit_action,
                    subject,
                    now,
                    stage=nxt + 1,
                    reason=decision.reason,
                )
                log.info(
                    kv("rollout_advanced", rollout=rollout.rollout_id, stage=nxt + 1, reason=decision.reason)
                )
                continue
            if isinstance(decision, Complete):
                audit.record(s, audit.ENGINE_ACTOR, decision.audit_action, subject, now)
                store.set_rollout_state(s, rollout, RolloutState.COMPLETED, decision.reason, now, final=True)
            elif isinstance(decision, RollBack | Pause):
                audit.record(
                    s, audit.ENGINE_ACTOR, decision.audit_action, subject, now, reason=decision.reason
                )
                if decision.audit_action == f"rollout.auto_{rollout.on_failure}":
                    log.warning(
                        kv(
                            "rollout_error_threshold",
                            rollout=rollout.rollout_id,
                            action=rollout.on_failure,
                            failures=counts.failed - counts.acknowledged,
                            size=counts.size,
                        )
                    )
                if isinstance(decision, RollBack):
                    self.stages.roll_back(s, rollout, decision.reason, now)
                else:
                    store.set_rollout_state(s, rollout, RolloutState.PAUSED, decision.reason, now)
            return
