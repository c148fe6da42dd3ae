"""Precision that produced each result and that each agent runs (payload schema_version 2)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ('agents', 'classifications'):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column('precision', sa.String(length=8), nullable=True))
            batch.add_column(sa.Column('execution_precision', sa.String(length=64), nullable=True))


def downgrade() -> None:
    for table in ('agents', 'classifications'):
        with op.batch_alter_table(table) as batch:
            batch.drop_column('execution_precision')
            batch.drop_column('precision')
