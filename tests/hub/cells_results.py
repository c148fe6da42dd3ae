"""Results of schema_version 3 as an agent builds them, for the hub's cell-level tests: single cells
(:func:`make_cell`), fields decided by :data:`RULE` (:func:`make_field_result`), and a message as the
ingest worker queues it (:func:`incoming`); a migrated SQLite database (:func:`sqlite_db`) and row
counts (:func:`count`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select

from hub.db.migrate import upgrade
from hub.db.session import Database
from hub.ingest.batches import Incoming
from shared import topics
from shared.cells.decision import decide
from shared.cells.spec import DecisionRule, InputKind
from shared.schemas import CellResult, ClassificationResult
from tests.hub.conftest import hub_config, make_result

LABELS = ["ALL", "normal"]
RULE = DecisionRule(kind="any", positive_labels=["ALL"], negative_label="normal", threshold=0.5)


def make_cell(x: int, y: int, p_all: float, side: int = 96, **kw: Any) -> CellResult:
    probabilities = {"ALL": p_all, "normal": round(1.0 - p_all, 6)}
    label = "ALL" if p_all >= 0.5 else "normal"
    return CellResult(
        box=(x, y, side, side),
        label=label,
        confidence=probabilities[label],
        probabilities=probabilities,
        **kw,
    )


def make_field_result(
    agent_id: str = "scope-1", cells: Sequence[CellResult] | None = None, **kw: Any
) -> ClassificationResult:
    """A field's result as an agent builds it: its cells, decided by :data:`RULE`."""
    if cells is None:
        cells = [
            make_cell(120, 80, 0.93, unfamiliar=False, ood_score=3.5),
            make_cell(900, 400, 0.08, ood_score=2.25),
            make_cell(1800, 1300, 0.41, unfamiliar=True, ood_score=31.0),
        ]
    d = decide([c.probabilities for c in cells], LABELS, RULE)
    fields: dict[str, Any] = {
        "label": d.label,
        "confidence": d.confidence,
        "probabilities": d.scores,
        "input_kind": InputKind.FIELD,
        "cells": list(cells),
        "cell_counts": d.counts,
        "decision_rule": RULE.describe(),
        "specimen_id": "S-2026-0042",
        "ood_score": 4.0,
        "image_name": f"field-{uuid.uuid4().hex[:8]}.png",
    }
    fields.update(kw)
    return make_result(agent_id=agent_id, **fields)


def incoming(agent_id: str, payload: bytes, mid: int) -> Incoming:
    name = topics.build(agent_id, topics.Kind.RESULTS)
    return Incoming(topics.parse(name), name, payload, mid, 1, 0, time.monotonic())


def sqlite_db(tmp_path) -> Database:
    db = Database(hub_config(tmp_path, None).db_url)
    upgrade(db)
    return db


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)
