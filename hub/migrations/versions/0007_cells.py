"""Cell-level results (payload schema_version 3): a result's input kind, unfamiliar flag, OOD score,
specimen, decision rule and cell counts; a field's cells in result_cells

New columns of classifications (NULL, or false, for the rows already stored and for v1/v2 results):
input_kind, unfamiliar (NOT NULL DEFAULT false: PostgreSQL 11+ adds it without rewriting the
table), ood_score, specimen_id, decision_rule, cell_counts.

result_cells: one row per cell of a field, keyed (classification_id, cell_index), the key a later
per-cell review references; ON DELETE CASCADE, so retention's delete of a result takes its cells.

Indexes, each ending in (captured_at, id) like 0006's, so a page is an index range read:

* ix_classifications_unfamiliar_captured_id (captured_at, id) WHERE unfamiliar: ``?unfamiliar=true``
  (+ time, cursor), and "unfamiliar first" views (this range, then the time index). Partial: it
  holds only the flagged results (about 1 % by calibration), so ingest of the others pays nothing.
* ix_classifications_specimen_captured_id (specimen_id, captured_at, id) WHERE specimen_id IS NOT
  NULL: ``?specimen_id=`` (a specimen's fields, for review). Partial: v1/v2 results carry none.

``?input_kind=`` has no index of its own: two values, mostly one of them, so the time index read
with the filter applied finds a page soonest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-16
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'classifications'
COLUMNS = ('input_kind', 'unfamiliar', 'ood_score', 'specimen_id', 'decision_rule', 'cell_counts')


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column('input_kind', sa.String(length=8), nullable=True))
        batch.add_column(sa.Column('unfamiliar', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column('ood_score', sa.Float(), nullable=True))
        batch.add_column(sa.Column('specimen_id', sa.String(length=128), nullable=True))
        batch.add_column(sa.Column('decision_rule', sa.String(length=256), nullable=True))
        batch.add_column(sa.Column('cell_counts', sa.JSON(), nullable=True))
    op.create_index(
        'ix_classifications_unfamiliar_captured_id',
        TABLE,
        ['captured_at', 'id'],
        sqlite_where=sa.text('unfamiliar = 1'),
        postgresql_where=sa.text('unfamiliar = true'),
    )
    op.create_index(
        'ix_classifications_specimen_captured_id',
        TABLE,
        ['specimen_id', 'captured_at', 'id'],
        sqlite_where=sa.text('specimen_id IS NOT NULL'),
        postgresql_where=sa.text('specimen_id IS NOT NULL'),
    )
    op.create_table(
        'result_cells',
        sa.Column('classification_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('cell_index', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('x', sa.Integer(), nullable=False),
        sa.Column('y', sa.Integer(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('label', sa.String(length=64), nullable=False),
        sa.Column('confidence', sa.Float(), nullable=False),
        sa.Column('probabilities', sa.JSON(), nullable=False),
        sa.Column('unfamiliar', sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column('ood_score', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ['classification_id'],
            ['classifications.id'],
            name='fk_result_cells_classification',
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('classification_id', 'cell_index'),
    )


def downgrade() -> None:
    op.drop_table('result_cells')
    op.drop_index('ix_classifications_specimen_captured_id', table_name=TABLE)
    op.drop_index('ix_classifications_unfamiliar_captured_id', table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
