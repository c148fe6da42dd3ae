"""A small, varied set of results for the explorer and export tests: two labs, three agents, two
model versions, specimens, flags (unfamiliar, low confidence) and every review state."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from hub.db.session import Database
from shared.schemas import ClassificationResult
from tests.hub.conftest import make_result
from tests.hub.review_fixtures import ALICE, BOB, TWO, act, signs, store

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


@dataclass
class Seeded:
    results: list[ClassificationResult]
    final: uuid.UUID  # a negative signed by alice: final
    reviewed: uuid.UUID  # a negative reclassified by alice to ALL, not signed
    needs_second: uuid.UUID  # a positive confirmed by alice, signed once by bob (two-person rule)

    def ids(self, **match: object) -> set[str]:
        """Result ids whose fields equal ``match``."""
        return {str(r.result_id) for r in self.results if all(getattr(r, k) == v for k, v in match.items())}


def seed(db: Database, n: int = 24) -> Seeded:
    """``n`` results a minute apart; three of them reviewed into each non-initial state."""
    results = []
    for i in range(n):
        results.append(
            make_result(
                agent_id=f"scope-{i % 3}",
                lab="Lab A" if i % 2 else "Lab B",
                label=("ALL", "normal", "AML")[i % 3] if i % 5 else "normal",
                confidence=0.55 if i % 7 == 0 else 0.93,
                low_confidence=i % 7 == 0,
                model_version="1.0.0" if i < n // 2 else "2.0.0",
                captured_at=T0 + timedelta(minutes=i),
                schema_version=3,
                unfamiliar=i % 11 == 4,
                ood_score=9.0 if i % 11 == 4 else 1.0,
                specimen_id=f"SP-{i % 4}",
            )
        )
    store(db, results, TWO)
    final, reviewed, second = (results[i].result_id for i in (1, 4, 3))
    signs(db, final, ALICE, TWO)
    act(db, reviewed, ALICE, TWO, action="reclassify", label="ALL")
    act(db, second, ALICE, TWO, action="confirm")
    signs(db, second, BOB, TWO)
    return Seeded(results, final, reviewed, second)
