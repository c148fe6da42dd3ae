"""Results at fleet scale: indexes that end in (captured_at, id), for keyset pages and retention

Every query on classifications orders by (captured_at, id), newest first (the API's pages, the
dashboard's latest results) or oldest first (retention). Each index below ends in that order, so
a page or a retention batch is one index range read with no sort over the filtered rows:

* ix_classifications_captured_id (captured_at, id): the dashboard's latest 50; GET
  /api/v1/classifications without agent or label filter (with or without since/until and the
  cursor); retention's ``captured_at < cutoff ORDER BY captured_at, id LIMIT batch`` and its count.
* ix_classifications_agent_captured_id (agent_id, captured_at, id): ``?agent_id=`` (+ time, cursor).
* ix_classifications_label_captured_id (label, captured_at, id): ``?label=`` (+ time, cursor).

They replace, and make redundant, the indexes 0001 made on (captured_at), (agent_id, captured_at)
and (label): each old one is a prefix of its replacement, and without ``id`` at the end PostgreSQL
had to sort every row with the same captured_at (or, for label, every row of the label).
Plain CREATE INDEX (the migration runs in one transaction): writes to the table wait while each
index is built, a few seconds per million rows; ingest holds PUBACKs meanwhile, so nothing is lost.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = 'classifications'
NEW = {
    'ix_classifications_captured_id': ['captured_at', 'id'],
    'ix_classifications_agent_captured_id': ['agent_id', 'captured_at', 'id'],
    'ix_classifications_label_captured_id': ['label', 'captured_at', 'id'],
}
OLD = {
    'ix_classifications_captured_at': ['captured_at'],
    'ix_classifications_agent_captured': ['agent_id', 'captured_at'],
    'ix_classifications_label': ['label'],
}


def upgrade() -> None:
    # new first, so every query keeps an index while the old ones go
    for name, columns in NEW.items():
        op.create_index(name, TABLE, columns)
    for name in OLD:
        op.drop_index(name, table_name=TABLE)


def downgrade() -> None:
    for name, columns in OLD.items():
        op.create_index(name, TABLE, columns)
    for name in NEW:
        op.drop_index(name, table_name=TABLE)
