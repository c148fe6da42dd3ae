"""The review service on SQLite (PostgreSQL: its statements in test_review_queue.py): review
statuses made at ingest, by the migration and on first use, every state transition and refusal,
the two-person rule, per-cell review, optimistic concurrency and the append-only trail."""

from __future__ import annotations

import re
import uuid

import pytest
from alembic import command
from sqlalchemy import delete, func, inspect, select, text

from hub.db.migrate import alembic_config, upgrade
from hub.db.results import ResultCell
from hub.db.review_models import AppendOnlyError, Classification, ReviewAction, ReviewStatus
from hub.db.session import Database
from hub.review.policy import Priority, ReviewSettings
from hub.review.service import cell_label, find_result
from hub.review.statuses import add_review_statuses, backfill, ensure_status
from shared.schemas import ClassificationResult
from tests.hub.conftest import make_result
from tests.hub.migration_checks import check_upgrade_creates_schema
from tests.hub.review_fixtures import (
    ALICE,
    BOB,
    DEFAULT,
    NOW,
    ROOT,
    TWO,
    act,
    field_result,
    kinds,
    refused,
    signs,
    status,
    store,
    store_without_status,
    trail,
)


@pytest.fixture
def stored(db: Database) -> dict[str, ClassificationResult]:
    results = kinds()
    store(db, list(results.values()))
    return results


# --- statuses at ingest, by migration, on first use ----------------------------------------------


def test_statuses_get_the_triage_priority_of_each_kind(db, stored):
    expected = {"negative": 3, "positive": 1, "low": 2, "flagged": 0}
    for kind, result in stored.items():
        st = status(db, result.result_id)
        assert (st.state, st.priority, st.version) == ("unreviewed", expected[kind], 1), kind
        assert st.current_label == result.label and st.captured_at == result.captured_at
    # the SQL CASE and the Python rule agree on every kind, with a hub-side confidence floor too
    settings = ReviewSettings(low_confidence_below=0.98)
    for result in stored.values():
        py = settings.priority(
            label=result.label,
            confidence=result.confidence,
            low_confidence=result.low_confidence,
            unfamiliar=result.unfamiliar,
        )
        fresh = make_result(
            label=result.label,
            confidence=result.confidence,
            low_confidence=result.low_confidence,
            schema_version=3,
            unfamiliar=result.unfamiliar,
        )
        store(db, [fresh], settings)
        assert status(db, fresh.result_id).priority == py
    assert status(db, stored["negative"].result_id).priority == Priority.NEGATIVE  # unchanged


def test_statuses_are_added_once_per_result_whatever_the_batch_holds(db):
    first = make_result()
    store(db, [first])
    again = [first, first, make_result()]
    store_without_status(db, again[2:])
    with db.transaction() as s:
        assert add_review_statuses(s, [r.result_id for r in again], DEFAULT) == 1  # only the new one
        assert add_review_statuses(s, [r.result_id for r in again], DEFAULT) == 0
        assert add_review_statuses(s, [uuid.uuid4()], DEFAULT) == 0  # never stored
        assert s.scalar(select(func.count()).select_from(ReviewStatus)) == 2


def test_ensure_status_makes_the_row_of_an_older_result(db):
    older = make_result(label="ALL")
    store_without_status(db, [older])  # as before review existed
    with db.transaction() as s:
        row = find_result(s, older.result_id)
        assert s.get(ReviewStatus, row.id) is None
        made = ensure_status(s, row.id, DEFAULT)
        assert made is not None and (made.state, made.priority) == ("unreviewed", Priority.POSITIVE)
        assert ensure_status(s, row.id, DEFAULT) is made
        assert ensure_status(s, 2**31 - 1, DEFAULT) is None
        assert backfill(s, DEFAULT) == 0  # nothing left without a status


def test_migration_0009_backfills_every_result_and_downgrades(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        upgrade(db, "0008")
        results = list(kinds().values())
        store_without_status(db, results)
        upgrade(db)
        by_id = {r.result_id: r for r in results}
        with db.session() as s:
            rows = s.execute(
                text(
                    "SELECT c.result_id, r.state, r.priority, r.current_label, r.version "
                    "FROM review_status r JOIN classifications c ON c.id = r.result_id"
                )
            ).all()
        got = {uuid.UUID(str(rid)): (state, prio, label, v) for rid, state, prio, label, v in rows}
        assert set(got) == set(by_id)
        for rid, r in by_id.items():
            expected = DEFAULT.priority(
                label=r.label,
                confidence=r.confidence,
                low_confidence=r.low_confidence,
                unfamiliar=r.unfamiliar,
            )
            assert got[rid] == ("unreviewed", expected, r.label, 1)
        indexes = {i["name"]: i["column_names"] for i in inspect(db.engine).get_indexes("review_status")}
        assert indexes["ix_review_status_queue"] == ["state", "priority", "captured_at", "result_id"]
        cfg = alembic_config()
        with db.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0008")
        assert not {"review_status", "review_actions"} & set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()


def test_models_and_migrations_agree(tmp_path):
    check_upgrade_creates_schema(f"sqlite:///{tmp_path / 'fresh' / 'hub.db'}")


def test_a_result_deleted_by_retention_takes_its_status_but_not_its_trail(db, stored):
    rid = stored["positive"].result_id
    act(db, rid, action="confirm")
    with db.transaction() as s:
        s.execute(delete(Classification).where(Classification.result_id == rid))
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ReviewStatus)) == 3
    assert [a[0] for a in trail(db, rid)] == ["confirm"]


# --- the state machine ----------------------------------------------------------------------------


def test_a_confident_negative_may_be_signed_unreviewed_and_then_is_final(db, stored):
    rid = stored["negative"].result_id
    st = signs(db, rid)
    assert (st.state, st.signed_by, st.signed_at, st.version) == ("final", "alice", NOW, 2)
    assert trail(db, rid) == [("sign", "normal", "normal", "unreviewed", "final", "alice")]
    with refused(409, "review_final", "final"):
        act(db, rid, action="reclassify", label="ALL")
    with refused(409, "review_final", "final"):
        act(db, rid, action="confirm")
    with refused(409, "cannot_sign", "already final"):
        signs(db, rid, BOB)
    act(db, rid, action="comment", comment="LIS copy sent")  # comments are always allowed
    assert trail(db, rid)[-1] == ("comment", "normal", "normal", "final", "final", "alice")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("positive", "a positive result needs a review"),
        ("flagged", "an unfamiliar \\(flagged\\) result needs a review"),
        ("low", "a low-confidence result needs a review"),
    ],
)
def test_positive_unfamiliar_and_low_confidence_results_are_never_signed_unreviewed(db, stored, kind, reason):
    rid = stored[kind].result_id
    with refused(409, "cannot_sign", reason):
        signs(db, rid)
    assert status(db, rid).state == "unreviewed" and trail(db, rid) == []
    st = act(db, rid, BOB, action="confirm")
    assert (st.state, st.reviewed_by, st.current_label) == ("reviewed", "bob", stored[kind].label)
    assert signs(db, rid).state == "final"
    assert [a[0] for a in trail(db, rid)] == ["confirm", "sign"]


def test_reclassify_checks_the_label_and_unsure_is_never_final(db, stored):
    rid = stored["positive"].result_id
    with refused(422, "label_required", "reclassify needs a label, one of: ALL, normal, unsure, other"):
        act(db, rid, action="reclassify")
    with refused(422, "unknown_label", "'AML' cannot be chosen"):
        act(db, rid, action="reclassify", label="AML")
    with refused(422, "same_label", "already labelled 'ALL': confirm it"):
        act(db, rid, action="reclassify", label="ALL")
    st = act(db, rid, action="reclassify", label="unsure", comment="smudged")
    assert (st.state, st.current_label) == ("reviewed", "unsure")
    with refused(422, "nothing_to_confirm", "labelled unsure"):
        act(db, rid, BOB, action="confirm")
    with refused(409, "cannot_sign", "labelled unsure: reclassify it"):
        signs(db, rid, BOB)
    st = act(db, rid, BOB, action="reclassify", label="other")
    assert (st.current_label, st.reviewed_by) == ("other", "bob")
    assert signs(db, rid, BOB).state == "final"
    assert trail(db, rid) == [
        ("reclassify", "ALL", "unsure", "unreviewed", "reviewed", "alice"),
        ("reclassify", "unsure", "other", "reviewed", "reviewed", "bob"),
        ("sign", "other", "other", "reviewed", "final", "bob"),
    ]


def test_a_comment_needs_text_and_changes_nothing(db, stored):
    rid = stored["low"].result_id
    with refused(422, "comment_required", "needs a comment"):
        act(db, rid, action="comment", comment="   ")
    st = act(db, rid, action="comment", comment="rerun the stain")
    assert (st.state, st.current_label, st.reviewed_by, st.version) == ("unreviewed", "normal", None, 2)


def test_a_stale_version_is_refused_naming_who_changed_it(db, stored):
    rid = stored["positive"].result_id
    act(db, rid, BOB, action="confirm")  # version 1 -> 2
    with refused(409, "stale_version", "your version 1, now 2, last changed by bob"):
        act(db, rid, ALICE, version=1, action="reclassify", label="normal")
    with refused(409, "stale_version", "reload it"):
        signs(db, rid, ALICE, version=1)
    assert status(db, rid).current_label == "ALL"  # nothing was overwritten
    with refused(404, "result_not_found", "no result"):
        act(db, uuid.uuid4(), version=1, action="confirm")


def test_two_person_rule_needs_a_second_signature_by_someone_else(db, stored):
    rid = stored["positive"].result_id
    act(db, rid, ALICE, TWO, action="confirm")
    st = signs(db, rid, ALICE, TWO)
    assert (st.state, st.signed_by, st.second_signed_by) == ("needs_second", "alice", None)
    with refused(409, "cannot_sign", "you signed first; a different reviewer must sign second"):
        signs(db, rid, ALICE, TWO)
    st = signs(db, rid, BOB, TWO)
    assert (st.state, st.signed_by, st.second_signed_by) == ("final", "alice", "bob")
    assert [a[0] for a in trail(db, rid)] == ["confirm", "sign", "second_sign"]
    # a negative the model and the reviewers agree on needs one signature
    negative = stored["negative"].result_id
    assert signs(db, negative, ALICE, TWO).state == "final"
    # a negative a reviewer calls positive involves a positive: two signatures
    low = stored["low"].result_id
    act(db, low, ALICE, TWO, action="reclassify", label="ALL")
    assert signs(db, low, ALICE, TWO).state == "needs_second"


def test_reclassifying_while_waiting_for_the_second_signature_voids_the_first(db, stored):
    rid = stored["positive"].result_id
    act(db, rid, ALICE, TWO, action="confirm")
    assert signs(db, rid, ALICE, TWO).state == "needs_second"
    st = act(db, rid, BOB, TWO, action="confirm")  # a confirm keeps the first signature
    assert (st.state, st.signed_by) == ("needs_second", "alice")
    st = act(db, rid, BOB, TWO, action="reclassify", label="other")
    assert (st.state, st.signed_by, st.current_label) == ("reviewed", None, "other")
    assert signs(db, rid, BOB, TWO).state == "needs_second"
    assert signs(db, rid, ALICE, TWO).state == "final"
    # an unfamiliar result the reviewers call negative needs its review, then one signature
    flagged = stored["flagged"].result_id
    act(db, flagged, BOB, TWO, action="confirm")
    assert signs(db, flagged, BOB, TWO).state == "final"
    # with the rule switched off, a result left waiting is finished by any signature
    low = stored["low"].result_id
    act(db, low, ALICE, TWO, action="reclassify", label="ALL")
    assert signs(db, low, ALICE, TWO).state == "needs_second"
    assert signs(db, low, ALICE, DEFAULT).state == "final"


# --- per-cell review ------------------------------------------------------------------------------


def test_a_cell_is_reviewed_on_its_own_and_the_field_label_stays(db):
    field = field_result()
    store(db, [field])
    rid = field.result_id
    st = act(db, rid, action="reclassify", label="normal", cell_index=1, comment="a smudge cell")
    assert (st.state, st.current_label, st.version) == ("unreviewed", "ALL", 2)
    with db.session() as s:
        row = find_result(s, rid)
        cell = s.get(ResultCell, (row.id, 1))
        assert cell is not None and cell.label == "ALL" and cell_label(s, cell) == "normal"
        action = s.scalars(select(ReviewAction).where(ReviewAction.result_uuid == rid)).one()
        assert (action.cell_index, action.from_label, action.to_label) == (1, "ALL", "normal")
    with refused(422, "same_label", "cell 2 is already labelled 'normal'"):
        act(db, rid, action="reclassify", label="normal", cell_index=1)
    act(db, rid, BOB, action="confirm", cell_index=0)
    with refused(422, "unknown_cell", "cell_index 3 does not exist: this result has 3 cells"):
        act(db, rid, action="reclassify", label="ALL", cell_index=3)
    single = make_result()
    store(db, [single])
    with refused(422, "unknown_cell", "has no cells"):
        act(db, single.result_id, action="confirm", cell_index=0)
    act(db, rid, action="confirm")
    signs(db, rid)
    with refused(409, "review_final", "final"):
        act(db, rid, action="reclassify", label="ALL", cell_index=2)
    act(db, rid, action="comment", comment="cell 3 looked odd", cell_index=2)


# --- the append-only trail ------------------------------------------------------------------------


def test_the_orm_refuses_to_change_or_remove_an_action(db, stored):
    act(db, stored["positive"].result_id, action="comment", comment="first")
    with pytest.raises(AppendOnlyError, match="append-only"), db.transaction() as s:
        action = s.scalars(select(ReviewAction)).one()
        action.comment = "rewritten"
    with pytest.raises(AppendOnlyError, match="cannot be deleted"), db.transaction() as s:
        s.delete(s.scalars(select(ReviewAction)).one())
    assert [a[0] for a in trail(db, stored["positive"].result_id)] == ["comment"]


REVIEW_CODE = [
    *sorted((ROOT / "hub" / "review").glob("*.py")),
    ROOT / "hub" / "api" / "reviews.py",
    ROOT / "hub" / "web" / "review.py",
    ROOT / "hub" / "db" / "review_models.py",
]


def test_no_code_updates_or_deletes_review_actions():
    """Nothing that handles reviews writes UPDATE or DELETE against the trail: no Core
    update()/delete() of it, no session.delete(), no SQL text naming the table with those verbs."""
    for path in REVIEW_CODE:
        source = path.read_text()
        where = path.relative_to(ROOT)
        assert not re.search(r"\b(update|delete)\(\s*ReviewAction\b", source), where
        assert not re.search(r"\.delete\(", source), where
        assert not re.search(r"(?i)\b(update|delete\s+from)\s+review_actions\b", source), where
    # the scan finds what it looks for
    assert re.search(r"\b(update|delete)\(\s*ReviewAction\b", "s.execute(update(ReviewAction))")
    assert re.search(r"(?i)\b(update|delete\s+from)\s+review_actions\b", "DELETE FROM review_actions")
