"""The result tables: one row per classified image (``classifications``) and one per white cell
of a field's result (``result_cells``).

A result is keyed by the UUID its agent generated (``result_id``, unique), so a redelivered QoS 1
message is stored once; its cells are written in the same transaction, only when the result itself
is, so a redelivery never duplicates them (:mod:`hub.ingest.results`). A cell row is addressed by
``(classification_id, cell_index)``, its primary key, which a later per-cell review can reference;
deleting a result (retention) deletes its cells with it (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Uuid, false, text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db.base import Base
from hub.db.types import UTCDateTime
from shared.clock import utcnow


class Classification(Base):
    """One classified image as an agent reported it (a single cell, or a field's decision)."""

    __tablename__ = "classifications"
    # Every read pages newest first on (captured_at, id) (the API's keyset cursor, the dashboard's
    # latest results) or oldest first (retention); each index ends in that order so a page is an
    # index range read with no sort, filtered by its leading column or its predicate. Migrations
    # 0006 and 0007 say which query each one serves. The two partial indexes hold only the rows
    # their filter keeps (few are unfamiliar; v1/v2 results have no specimen), so results that
    # are neither cost ingest nothing there.
    __table_args__ = (
        Index("ix_classifications_captured_id", "captured_at", "id"),
        Index("ix_classifications_agent_captured_id", "agent_id", "captured_at", "id"),
        Index("ix_classifications_label_captured_id", "label", "captured_at", "id"),
        Index("ix_classifications_lab_captured_id", "lab", "captured_at", "id"),
        Index("ix_classifications_model_captured_id", "model_name", "model_version", "captured_at", "id"),
        Index(
            "ix_classifications_flagged_captured_id",
            "captured_at",
            "id",
            sqlite_where=text("unfamiliar = 1 OR low_confidence = 1"),
            postgresql_where=text("unfamiliar = true OR low_confidence = true"),
        ),
        Index(
            "ix_classifications_specimen_captured_id",
            "specimen_id",
            "captured_at",
            "id",
            sqlite_where=text("specimen_id IS NOT NULL"),
            postgresql_where=text("specimen_id IS NOT NULL"),
        ),
        Index(
            "ix_classifications_unfamiliar_captured_id",
            "captured_at",
            "id",
            sqlite_where=text("unfamiliar = 1"),
            postgresql_where=text("unfamiliar = true"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[uuid.UUID] = mapped_column(Uuid(), unique=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    lab: Mapped[str] = mapped_column(String(128), default="")
    image_name: Mapped[str] = mapped_column(String(512))
    image_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    low_confidence: Mapped[bool] = mapped_column(Boolean, default=False)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64), default="")
    precision: Mapped[str | None] = mapped_column(String(8))
    execution_precision: Mapped[str | None] = mapped_column(String(64))
    timings: Mapped[dict[str, float]] = mapped_column(JSON)
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # schema_version 3 (NULL / false for results of older agents)
    #: ``cell`` or ``field``; NULL: an agent before schema_version 3 (whole image as one cell)
    input_kind: Mapped[str | None] = mapped_column(String(8))
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ood_score: Mapped[float | None] = mapped_column(Float)
    specimen_id: Mapped[str | None] = mapped_column(String(128))
    #: the field's decision rule in words (:meth:`shared.cells.spec.DecisionRule.describe`)
    decision_rule: Mapped[str | None] = mapped_column(String(256))
    #: a field's cells per predicted label
    cell_counts: Mapped[dict[str, int] | None] = mapped_column(JSON(none_as_null=True))


class ResultCell(Base):
    """One white cell of a field's result: where it is and what the model said about its crop."""

    __tablename__ = "result_cells"

    classification_id: Mapped[int] = mapped_column(
        Integer,
        ForeignKey("classifications.id", ondelete="CASCADE", name="fk_result_cells_classification"),
        primary_key=True,
        autoincrement=False,
    )
    #: 0-based position in the result's ``cells`` list (the page numbers cells from 1)
    cell_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    x: Mapped[int] = mapped_column(Integer)
    y: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    ood_score: Mapped[float | None] = mapped_column(Float)
