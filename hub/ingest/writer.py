"""Writing validated agent messages to the database, one transaction per batch.

Results are deduplicated by ``result_id``: against the rest of the batch, against rows already
stored, and (for concurrent workers) by ``INSERT .. ON CONFLICT DO NOTHING`` on SQLite and
PostgreSQL, falling back to one savepoint per row on other dialects. Status messages upsert the
agent; model events are stored once per ``event_id`` and ``activated`` updates the agent's
reported model.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.db.models import Agent, Classification, ModelEventRecord
from hub.db.session import Database
from hub.ingest.admission import Admission, Message
from shared.schemas import (
    AgentState,
    AgentStatus,
    ClassificationResult,
    ModelEvent,
    ModelEventKind,
)

log = logging.getLogger(__name__)


@dataclass
class BatchOutcome:
    """What one committed batch did."""

    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    events: int = 0
    #: messages refused by :class:`hub.ingest.admission.Admission`, by reason
    refused: Counter[str] = field(default_factory=Counter)


def _result_row(r: ClassificationResult, now: datetime) -> dict[str, Any]:
    return {
        "result_id": r.result_id,
        "agent_id": r.agent_id,
        "lab": r.lab,
        "image_name": r.image_name,
        "image_sha256": r.image_sha256,
        "label": r.label,
        "confidence": r.confidence,
        "probabilities": dict(r.probabilities),
        "low_confidence": r.low_confidence,
        "model_name": r.model_name,
        "model_version": r.model_version,
        "device": r.device,
        "precision": r.precision,
        "execution_precision": r.execution_precision,
        "timings": r.timings.model_dump(),
        "captured_at": r.captured_at,
        "received_at": now,
    }


class IngestWriter:
    """Applies lists of validated messages to ``db``; each :meth:`write` is one transaction.

    Args:
        admission: which messages are taken; the ingest worker passes the configured one. The
            default takes every agent (tools and tests that write trusted messages).
    """

    def __init__(self, db: Database, admission: Admission | None = None) -> None:
        self.db = db
        self.admission = admission or Admission(auto_register=True)

    def write(self, messages: list[Message]) -> BatchOutcome:
        """Store ``messages`` (in order) in one transaction.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: nothing was committed; the caller retries or splits.
        """
        now = datetime.now(timezone.utc)
        outcome = BatchOutcome()
        with self.db.transaction() as s:
            messages, outcome.refused = self.admission.admit(s, messages)
            agents: dict[str, Agent] = {}
            results = [m for m in messages if isinstance(m, ClassificationResult)]
            if results:
                self._write_results(s, results, now, outcome)
                for r in results:
                    agent = self._agent(s, agents, r.agent_id, r.lab)
                    if agent.last_seen is None or agent.last_seen < now:
                        agent.last_seen = now
            for m in messages:
                if isinstance(m, AgentStatus):
                    self._apply_status(s, agents, m, now)
                    outcome.statuses += 1
                elif isinstance(m, ModelEvent) and self._apply_event(s, agents, m, now):
                    outcome.events += 1
        return outcome

    # --- results ----------------------------------------------------------------------------
    def _write_results(
        self, s: Session, results: list[ClassificationResult], now: datetime, outcome: BatchOutcome
    ) -> None:
        unique: dict[uuid.UUID, ClassificationResult] = {}
        for r in results:
            unique.setdefault(r.result_id, r)
        outcome.duplicates += len(results) - len(unique)
        existing = set(
            s.scalars(select(Classification.result_id).where(Classification.result_id.in_(list(unique))))
        )
        fresh = [r for rid, r in unique.items() if rid not in existing]
        outcome.duplicates += len(unique) - len(fresh)
        if not fresh:
            return
        rows = [_result_row(r, now) for r in fresh]
        inserted = self._insert_ignoring_duplicates(s, rows)
        outcome.stored += inserted
        outcome.duplicates += len(rows) - inserted

    def _insert_ignoring_duplicates(self, s: Session, rows: list[dict[str, Any]]) -> int:
        table = Classification.__table__
        assert isinstance(table, Table)
        dialect = s.get_bind().dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = (
                insert(table)
                .on_conflict_do_nothing(index_elements=["result_id"])
                .returning(table.c.result_id)
            )
            return len(s.execute(stmt, rows).all())
        inserted = 0
        for row in rows:
            try:
                with s.begin_nested():
                    s.add(Classification(**row))
                inserted += 1
            except IntegrityError:
                log.debug("duplicate result %s (concurrent writer)", row["result_id"])
        return inserted

    # --- agents -----------------------------------------------------------------------------
    def _agent(self, s: Session, cache: dict[str, Agent], agent_id: str, lab: str = "") -> Agent:
        agent = cache.get(agent_id)
        if agent is None:
            agent = s.scalar(select(Agent).where(Agent.agent_id == agent_id))
            if agent is None:
                agent = Agent(agent_id=agent_id, lab=lab, state="unknown", vitals={})
                s.add(agent)
            cache[agent_id] = agent
        if lab and not agent.lab:
            agent.lab = lab
        return agent

    def _apply_status(self, s: Session, cache: dict[str, Agent], m: AgentStatus, now: datetime) -> None:
        # Applied in arrival order, not by sent_at: a last will carries the time the agent
        # connected, which is older than the online statuses it replaces.
        agent = self._agent(s, cache, m.agent_id, m.lab)
        agent.state = m.state.value
        if m.lab:
            agent.lab = m.lab
        agent.model_name = m.model_name
        agent.model_version = m.model_version
        agent.device = m.device
        agent.precision = m.precision
        agent.execution_precision = m.execution_precision
        agent.vitals = m.vitals.model_dump()
        agent.status_sent_at = m.sent_at
        if m.state is AgentState.ONLINE:
            agent.last_seen = now

    def _apply_event(self, s: Session, cache: dict[str, Agent], m: ModelEvent, now: datetime) -> bool:
        if s.scalar(select(ModelEventRecord.id).where(ModelEventRecord.event_id == m.event_id)) is not None:
            return False
        s.add(
            ModelEventRecord(
                event_id=m.event_id,
                agent_id=m.agent_id,
                event=m.event.value,
                model_name=m.model_name,
                model_version=m.model_version,
                rollout_id=m.rollout_id,
                detail=m.detail,
                sent_at=m.sent_at,
                received_at=now,
            )
        )
        agent = self._agent(s, cache, m.agent_id)
        agent.last_seen = now
        if m.event is ModelEventKind.ACTIVATED:
            agent.model_name = m.model_name
            agent.model_version = m.model_version
        return True
