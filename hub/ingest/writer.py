"""Writing validated agent messages to the database, one transaction per batch.

Results are deduplicated by ``result_id``: against the rest of the batch here, then against rows
already stored (by earlier batches or concurrent workers) by the database itself, all of a batch's
results in one set-based statement (:mod:`hub.ingest.results`); no ORM object is built for them.
Their agents are touched once per batch each: one ``UPDATE`` of ``last_seen`` for all of them, the
lab filled in where the agent has none, and (with ``auto_register_agents``) a row inserted for an
agent never seen. Status messages upsert the agent; model events are stored once per ``event_id``
and ``activated`` updates the agent's reported model.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Table, Update, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from hub.db.models import Agent, ModelEventRecord
from hub.db.session import Database
from hub.ingest.admission import Admission, Message
from hub.ingest.results import insert_results
from hub.review.policy import ReviewSettings
from hub.review.statuses import add_review_statuses
from shared.logs import kv
from shared.schemas import (
    AgentState,
    AgentStatus,
    ClassificationResult,
    ModelEvent,
    ModelEventKind,
)

log = logging.getLogger(__name__)


def _agents() -> Table:
    table = Agent.__table__
    assert isinstance(table, Table)
    return table


@functools.cache
def _seen_statement() -> Update:
    """``last_seen = :now`` for the agents ``:ids``, unless a concurrent batch already set it later;
    built once (a Core statement with expanding parameters skips per-call construction)."""
    table = _agents()
    now = bindparam("now", type_=table.c.last_seen.type)
    return (
        update(table)
        .where(
            table.c.agent_id.in_(bindparam("ids", expanding=True)),
            or_(table.c.last_seen.is_(None), table.c.last_seen < now),
        )
        .values(last_seen=now)
    )


@dataclass
class BatchOutcome:
    """What one committed batch did."""

    stored: int = 0
    duplicates: int = 0
    statuses: int = 0
    events: int = 0
    #: messages refused by :class:`hub.ingest.admission.Admission`, by reason
    refused: Counter[str] = field(default_factory=Counter)
    #: receipt minus ``captured_at`` (seconds) of each result stored
    lags: list[float] = field(default_factory=list)


class IngestWriter:
    """Applies lists of validated messages to ``db``; each :meth:`write` is one transaction.

    Args:
        admission: which messages are taken; the ingest worker passes the configured one. The
            default takes every agent (tools and tests that write trusted messages).
        keep_connection: hold one connection from batch to batch (the ingest worker's writer
            thread; :meth:`close` returns it). A connection taken from the pool per batch costs the
            pool's pre-ping, three round trips more per batch. It is dropped after an error that
            says the database went away, and the next batch takes a fresh one.
    """

    def __init__(
        self,
        db: Database,
        admission: Admission | None = None,
        keep_connection: bool = False,
        review: ReviewSettings | None = None,
    ) -> None:
        self.db = db
        self.review = review or ReviewSettings()
        self.admission = admission or Admission(auto_register=True)
        self.keep_connection = keep_connection
        self._connection: Connection | None = None

    def close(self) -> None:
        """Return the connection kept between batches, if any, to the pool."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def write(self, messages: list[Message]) -> BatchOutcome:
        """Store ``messages`` (in order) in one transaction.

        A kept connection that turns out dead (the database restarted since the last batch) is
        replaced and the batch tried once more, as the pool's pre-ping would have done.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: nothing was committed; the caller retries or splits.
        """
        reused = self._connection is not None
        try:
            return self._write(messages)
        except DBAPIError as exc:
            if not (reused and exc.connection_invalidated):
                raise
            log.info(kv("ingest_db_reconnect", error=str(exc)[:200]))
            return self._write(messages)

    @contextmanager
    def _transaction(self) -> Iterator[Session]:
        if not self.keep_connection:
            with self.db.transaction() as s:
                yield s
            return
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            self.close()
            connection = self._connection = self.db.engine.connect()
        try:
            with Session(bind=connection, expire_on_commit=False) as s, s.begin():
                yield s
        except (OperationalError, InterfaceError):
            self.close()
            raise

    def _write(self, messages: list[Message]) -> BatchOutcome:
        now = datetime.now(timezone.utc)
        outcome = BatchOutcome()
        with self._transaction() as s:
            admitted = self.admission.admit(s, messages)
            outcome.refused = admitted.refused
            results = [m for m in admitted.kept if isinstance(m, ClassificationResult)]
            if results:
                unique: dict[uuid.UUID, ClassificationResult] = {}
                for r in results:
                    unique.setdefault(r.result_id, r)
                outcome.lags = insert_results(s, list(unique.values()), now)
                add_review_statuses(s, list(unique), self.review)
                outcome.stored = len(outcome.lags)
                outcome.duplicates = len(results) - outcome.stored
                self._touch_agents(s, results, admitted.registered, now)
            agents: dict[str, Agent] = {}
            for m in admitted.kept:
                if isinstance(m, AgentStatus):
                    self._apply_status(s, agents, m, now)
                    outcome.statuses += 1
                elif isinstance(m, ModelEvent) and self._apply_event(s, agents, m, now):
                    outcome.events += 1
        return outcome

    # --- agents of results --------------------------------------------------------------------
    def _touch_agents(
        self, s: Session, results: list[ClassificationResult], registered: dict[str, str], now: datetime
    ) -> None:
        """Once per agent of ``results``: register it when new, fill in an empty lab, set ``last_seen``."""
        labs: dict[str, str] = {}
        for r in results:
            if not labs.get(r.agent_id):
                labs[r.agent_id] = r.lab  # the first result naming a lab gives it
        table = _agents()
        new = [a for a in labs if a not in registered]
        if new:
            self._register(s, table, [(a, labs[a]) for a in new], now)
        s.execute(_seen_statement(), {"ids": list(labs), "now": now})
        fill = [{"b_agent": a, "b_lab": lab} for a, lab in labs.items() if lab and not registered.get(a)]
        if fill:
            s.execute(
                update(table)
                .where(table.c.agent_id == bindparam("b_agent"), table.c.lab == "")
                .values(lab=bindparam("b_lab")),
                fill,
            )

    @staticmethod
    def _register(s: Session, table: Table, agents: list[tuple[str, str]], now: datetime) -> None:
        """Rows for agents seen for the first time (``auto_register_agents``); a concurrent worker's
        row for the same agent wins on PostgreSQL and SQLite."""
        rows = [
            {"agent_id": a, "lab": lab, "state": "unknown", "vitals": {}, "last_seen": now}
            for a, lab in agents
        ]
        dialect = s.get_bind().dialect.name
        if dialect in ("postgresql", "sqlite"):
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            s.execute(insert(table).on_conflict_do_nothing(index_elements=["agent_id"]), rows)
        else:
            s.add_all(Agent(**row) for row in rows)
            s.flush()

    # --- agents of statuses and events ----------------------------------------------------------
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
