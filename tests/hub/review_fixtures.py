"""Helpers of the review tests (test_review_service, test_review_queue, test_review_api,
test_review_pages): results of every triage kind and fields with cells, storing them as ingest will
(results, then their review statuses), acting as a reviewer through the service, and an app with
the review pages registered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

import hub.api.reviews  # noqa: F401  # registers the review routes on the api blueprint (before any app)
from hub.config import HubConfig
from hub.db.review_models import ReviewAction, ReviewStatus
from hub.db.session import Database
from hub.ingest.results import insert_results
from hub.ingest.writer import IngestWriter
from hub.review.policy import Reviewer, ReviewSettings
from hub.review.queue import queue_page
from hub.review.schemas import ReviewBody, SignBody
from hub.review.service import ReviewError, find_result, review, sign
from hub.web import review as review_web
from shared.schemas import CellResult, ClassificationResult, InputKind
from tests.hub.conftest import make_result, migrated_app

ROOT = Path(__file__).resolve().parents[2]
ALICE = Reviewer(101, "alice", "reviewer")
BOB = Reviewer(102, "bob", "reviewer")
DEFAULT = ReviewSettings()
TWO = ReviewSettings(two_person_rule=True)
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 5, 2, 9, 0, tzinfo=timezone.utc)


def review_app(config: HubConfig, settings: ReviewSettings | None = None) -> Flask:
    """The hub app (migrated, first admin made) with the review pages registered and, when given,
    a ``review`` config section (until hub.config carries one, a copy of ``config`` holding it)."""
    if settings is not None:
        config = config.model_copy(update={"review": settings})
    app = migrated_app(config)
    if review_web.bp.name not in app.blueprints:  # until hub.web registers it
        app.register_blueprint(review_web.bp)
    return app


def kinds(at: datetime = T0) -> dict[str, ClassificationResult]:
    """One result of each triage kind, captured a minute apart."""
    t = [at + timedelta(minutes=i) for i in range(4)]
    return {
        "negative": make_result(label="normal", confidence=0.97, captured_at=t[0]),
        "positive": make_result(label="ALL", confidence=0.95, captured_at=t[1]),
        "low": make_result(label="normal", confidence=0.55, low_confidence=True, captured_at=t[2]),
        "flagged": make_result(
            label="normal",
            confidence=0.99,
            captured_at=t[3],
            schema_version=3,
            unfamiliar=True,
            ood_score=9.5,
        ),
    }


def field_result(labels: tuple[str, ...] = ("normal", "ALL", "normal"), **kw: Any) -> ClassificationResult:
    """A field (schema_version 3) with one cell per label of ``labels``."""
    cells = [
        CellResult(
            box=(100 * i, 50, 90, 95),
            label=lab,
            confidence=0.9,
            probabilities={lab: 0.9, ("ALL" if lab == "normal" else "normal"): 0.1},
        )
        for i, lab in enumerate(labels)
    ]
    counts = {"ALL": labels.count("ALL"), "normal": labels.count("normal")}
    fields: dict[str, Any] = {
        "schema_version": 3,
        "input_kind": InputKind.FIELD,
        "cells": cells,
        "cell_counts": counts,
        "decision_rule": "any cell with p(ALL) >= 0.5",
        "label": "ALL" if "ALL" in labels else "normal",
        "confidence": 0.9,
    }
    fields.update(kw)
    return make_result(**fields)


def store(db: Database, results: list[ClassificationResult], settings: ReviewSettings = DEFAULT) -> None:
    """Write ``results`` as ingest does: the writer adds their review statuses in the same transaction."""
    IngestWriter(db, review=settings).write(list(results))


def store_without_status(db: Database, results: list[ClassificationResult]) -> None:
    """Write ``results`` as a hub that predates review did: result rows only, no review status."""
    with db.transaction() as s:
        insert_results(s, list(results), datetime.now(timezone.utc))


def status(db: Database, result_id: uuid.UUID) -> ReviewStatus:
    with db.session() as s:
        row = find_result(s, result_id)
        found = s.get(ReviewStatus, row.id)
        assert found is not None
        return found


def act(
    db: Database,
    result_id: uuid.UUID,
    who: Reviewer = ALICE,
    settings: ReviewSettings = DEFAULT,
    version: int | None = None,
    **body: Any,
) -> ReviewStatus:
    """A review action by ``who`` on the current version (unless ``version`` is given)."""
    request = ReviewBody(version=version or status(db, result_id).version, **body)
    with db.transaction() as s:
        return review(s, result_id, request, who, settings, NOW)


def signs(
    db: Database,
    result_id: uuid.UUID,
    who: Reviewer = ALICE,
    settings: ReviewSettings = DEFAULT,
    version: int | None = None,
) -> ReviewStatus:
    request = SignBody(version=version or status(db, result_id).version)
    with db.transaction() as s:
        return sign(s, result_id, request, who, settings, NOW)


def trail(db: Database, result_id: uuid.UUID) -> list[tuple[Any, ...]]:
    with db.session() as s:
        rows = s.scalars(
            select(ReviewAction).where(ReviewAction.result_uuid == result_id).order_by(ReviewAction.id)
        )
        return [(a.action, a.from_label, a.to_label, a.from_state, a.to_state, a.username) for a in rows]


@contextmanager
def refused(status_code: int, code: str, match: str) -> Iterator[None]:
    """Expect a ReviewError with that status, code and message part."""
    with pytest.raises(ReviewError, match=match) as info:
        yield
    assert (info.value.status, info.value.code) == (status_code, code), info.value


def queue_ids(db: Database, view: str, limit: int = 100) -> list[uuid.UUID]:
    """The result ids of the first ``limit`` rows of a queue view."""
    with db.session() as s:
        rows, _ = queue_page(s, view, limit)
        return [row.result_id for _, row in rows]
