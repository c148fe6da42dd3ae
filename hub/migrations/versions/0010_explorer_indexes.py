"""Results explorer: indexes for the lab, model, flagged and review filters, each ending in
(captured_at, id) so a filtered page is one index range read with no sort

* ix_classifications_lab_captured_id (lab, captured_at, id): ``?lab=`` (+ time, cursor).
* ix_classifications_model_captured_id (model_name, model_version, captured_at, id):
  ``?model_name=`` and ``?model_name=&model_version=``.
* ix_classifications_flagged_captured_id (captured_at, id) WHERE unfamiliar OR low_confidence:
  ``?flagged=true`` (a few percent of the rows; costs ingest nothing for the others).
* ix_review_status_state_captured (state, captured_at, result_id): ``?review_state=``; the query
  starts from review_status (which copies its result's captured_at) and joins each row's result.
* ix_review_status_label_captured (current_label, captured_at, result_id): ``?reviewed_label=``.

Plain CREATE INDEX in the migration's transaction: writes wait a few seconds per million rows
while each is built; ingest holds PUBACKs meanwhile, so nothing is lost.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RESULTS = {
    'ix_classifications_lab_captured_id': ['lab', 'captured_at', 'id'],
    'ix_classifications_model_captured_id': ['model_name', 'model_version', 'captured_at', 'id'],
}
REVIEW = {
    'ix_review_status_state_captured': ['state', 'captured_at', 'result_id'],
    'ix_review_status_label_captured': ['current_label', 'captured_at', 'result_id'],
}
FLAGGED = 'ix_classifications_flagged_captured_id'


def upgrade() -> None:
    for name, columns in RESULTS.items():
        op.create_index(name, 'classifications', columns)
    op.create_index(
        FLAGGED,
        'classifications',
        ['captured_at', 'id'],
        sqlite_where=sa.text('unfamiliar = 1 OR low_confidence = 1'),
        postgresql_where=sa.text('unfamiliar = true OR low_confidence = true'),
    )
    for name, columns in REVIEW.items():
        op.create_index(name, 'review_status', columns)


def downgrade() -> None:
    for name in REVIEW:
        op.drop_index(name, table_name='review_status')
    op.drop_index(FLAGGED, table_name='classifications')
    for name in RESULTS:
        op.drop_index(name, table_name='classifications')
