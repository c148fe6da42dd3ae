"""Review and sign-off: review_status (one row per result) and review_actions (the append-only trail)

review_status: result_id (PK, FK classifications.id ON DELETE CASCADE: retention takes it with the
result), state (unreviewed | reviewed | needs_second | final), priority (0 flagged, 1 positive,
2 low confidence, 3 confident negative), captured_at (copied from the result), current_label,
who reviewed and signed (id, name, time; a second signature for the two-person rule), updated_at,
version (optimistic concurrency).

ix_review_status_queue (state, priority, captured_at, result_id): the queue, ``state = :s ORDER BY
priority, captured_at, result_id`` after a keyset cursor, is one range of it per state.

review_actions: every reviewer action (confirm, reclassify, comment, sign, second_sign), on a
result or one cell of it, with the labels and states before and after, the person and their role.
No foreign key to the result: the trail outlives retention (result_uuid names the result).
ix_review_actions_result (result_id, id): a result's history.

Backfill: every result already stored gets its status in one INSERT ... SELECT, with the default
review settings (negative label ``normal``; the agent's low-confidence flag). Results stored by a
hub whose config names other negative labels get their priority from ingest onwards.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-18
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.db.types import UTCDateTime

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The backfill's priority is frozen here (a migration must not change with the code's defaults).
BACKFILL = """
INSERT INTO review_status (result_id, state, priority, captured_at, current_label, version)
SELECT id, 'unreviewed',
       CASE WHEN unfamiliar THEN 0 WHEN label <> 'normal' THEN 1 WHEN low_confidence THEN 2 ELSE 3 END,
       captured_at, label, 1
FROM classifications
"""


def upgrade() -> None:
    op.create_table(
        'review_status',
        sa.Column('result_id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('priority', sa.SmallInteger(), nullable=False),
        sa.Column('captured_at', UTCDateTime(), nullable=False),
        sa.Column('current_label', sa.String(length=64), nullable=False),
        sa.Column('reviewed_by_id', sa.Integer(), nullable=True),
        sa.Column('reviewed_by', sa.String(length=64), nullable=True),
        sa.Column('reviewed_at', UTCDateTime(), nullable=True),
        sa.Column('signed_by_id', sa.Integer(), nullable=True),
        sa.Column('signed_by', sa.String(length=64), nullable=True),
        sa.Column('signed_at', UTCDateTime(), nullable=True),
        sa.Column('second_signed_by_id', sa.Integer(), nullable=True),
        sa.Column('second_signed_by', sa.String(length=64), nullable=True),
        sa.Column('second_signed_at', UTCDateTime(), nullable=True),
        sa.Column('updated_at', UTCDateTime(), nullable=True),
        sa.Column('version', sa.Integer(), server_default=sa.text('1'), nullable=False),
        sa.ForeignKeyConstraint(
            ['result_id'], ['classifications.id'], name='fk_review_status_result', ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('result_id'),
    )
    op.create_table(
        'review_actions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('result_id', sa.Integer(), nullable=False),
        sa.Column('result_uuid', sa.Uuid(), nullable=False),
        sa.Column('cell_index', sa.Integer(), nullable=True),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('from_label', sa.String(length=64), nullable=True),
        sa.Column('to_label', sa.String(length=64), nullable=True),
        sa.Column('from_state', sa.String(length=16), nullable=False),
        sa.Column('to_state', sa.String(length=16), nullable=False),
        sa.Column('comment', sa.Text(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('at', UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_review_actions_result', 'review_actions', ['result_id', 'id'])
    # backfill before the queue index: one index build instead of a million index inserts
    op.execute(BACKFILL)
    op.create_index(
        'ix_review_status_queue', 'review_status', ['state', 'priority', 'captured_at', 'result_id']
    )


def downgrade() -> None:
    op.drop_index('ix_review_status_queue', table_name='review_status')
    op.drop_table('review_status')
    op.drop_index('ix_review_actions_result', table_name='review_actions')
    op.drop_table('review_actions')
