"""Which validated agent messages the hub takes, decided per batch inside the writer's transaction.

* A message from an agent id the hub has never registered is refused (``unknown_agent``) unless
  ``ingest.auto_register_agents`` is on (tests). Agents are registered by enrollment
  (``leukonet agent enroll``) or by hand (``leukonet hub agents add``).
* A message from a revoked agent is refused (``revoked_agent``), whatever the settings: the broker
  has already dropped its account, this is the hub's own line of defence behind it.
* A result whose ``probabilities`` keys, or those of one of its cells, differ from the labels the
  registry holds for its model version is refused (``labels_mismatch``). A model the registry does
  not hold is not checked.

Refused messages are counted by reason and acknowledged with their batch, so they never return.
The agents' rows read for this also tell the writer which agents exist and their labs
(:attr:`Admitted.registered`), so it needs no second look-up.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Table, bindparam, select, tuple_
from sqlalchemy.orm import Session

from hub.db.models import Agent, ModelVersion
from shared.schemas import AgentStatus, ClassificationResult, ModelEvent

Message = ClassificationResult | AgentStatus | ModelEvent


@dataclass
class Admitted:
    """One batch after admission."""

    #: the messages to store, in arrival order
    kept: list[Message]
    #: the refused ones, counted by reason
    refused: Counter[str]
    #: agent id -> lab of the batch's agents that have a row (revoked ones included)
    registered: dict[str, str]


class Admission:
    """Filters batches; caches the registry's labels (model versions are immutable).

    Args:
        auto_register: take messages from unknown agents (registering them on first sight).
    """

    def __init__(self, auto_register: bool) -> None:
        self.auto_register = auto_register
        self._labels: dict[tuple[str, str], frozenset[str]] = {}

    def admit(self, s: Session, messages: Sequence[Message]) -> Admitted:
        """Split ``messages`` into the ones to store and the refused ones (one query for the agents)."""
        refused: Counter[str] = Counter()
        registered, revoked = self._agents(s, {m.agent_id for m in messages})
        labels = self._model_labels(
            s, {(m.model_name, m.model_version) for m in messages if isinstance(m, ClassificationResult)}
        )
        check_known = not self.auto_register
        kept: list[Message] = []
        for m in messages:
            if m.agent_id in revoked:
                refused["revoked_agent"] += 1
            elif check_known and m.agent_id not in registered:
                refused["unknown_agent"] += 1
            elif isinstance(m, ClassificationResult) and not _labels_fit(m, labels):
                refused["labels_mismatch"] += 1
            else:
                kept.append(m)
        return Admitted(kept, refused, registered)

    def _agents(self, s: Session, ids: set[str]) -> tuple[dict[str, str], set[str]]:
        """Of ``ids``: the ones with a row (agent id -> lab) and the revoked ones."""
        if not ids:
            return {}, set()
        rows = s.execute(_agents_statement(), {"ids": list(ids)}).all()
        revoked = {agent_id for agent_id, _, revoked_at in rows if revoked_at is not None}
        return {agent_id: lab for agent_id, lab, _ in rows}, revoked

    def _model_labels(self, s: Session, refs: set[tuple[str, str]]) -> dict[tuple[str, str], frozenset[str]]:
        missing = refs - set(self._labels)
        if missing:
            rows = s.execute(
                select(ModelVersion.name, ModelVersion.version, ModelVersion.manifest).where(
                    tuple_(ModelVersion.name, ModelVersion.version).in_(list(missing))
                )
            )
            for name, version, manifest in rows:
                self._labels[(name, version)] = frozenset(manifest.get("labels", []))
        return {ref: self._labels[ref] for ref in refs if ref in self._labels}


@functools.cache
def _agents_statement() -> Select[Any]:
    # built once: a Core statement with an expanding parameter skips the ORM's per-call work
    agents = Agent.__table__
    assert isinstance(agents, Table)
    return select(agents.c.agent_id, agents.c.lab, agents.c.revoked_at).where(
        agents.c.agent_id.in_(bindparam("ids", expanding=True))
    )


def _labels_fit(r: ClassificationResult, labels: dict[tuple[str, str], frozenset[str]]) -> bool:
    expected = labels.get((r.model_name, r.model_version))
    if expected is None:
        return True
    return r.probabilities.keys() == expected and all(
        c.probabilities.keys() == expected for c in r.cells or ()
    )
