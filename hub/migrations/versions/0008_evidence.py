"""Evidence images: the evidence table (one row per stored image, keyed by its sha256)

The image files live in the hub's evidence folder (``evidence.dir``, default ``data_dir/evidence``)
at ``ab/cd/<sha256>``; a row says what the file is (kind original or preview, content type and
digest, size, pixels), which agent uploaded it and when it was stored. ix_evidence_stored_at
(stored_at, sha256) serves retention's ``stored_at < cutoff ORDER BY stored_at, sha256 LIMIT n``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-17
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.db.types import UTCDateTime

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'evidence',
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('content_type', sa.String(length=64), nullable=False),
        sa.Column('content_sha256', sa.String(length=64), nullable=False),
        sa.Column('size_bytes', sa.Integer(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=True),
        sa.Column('height', sa.Integer(), nullable=True),
        sa.Column('agent_id', sa.String(length=64), nullable=False),
        sa.Column('stored_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('sha256'),
    )
    op.create_index('ix_evidence_stored_at', 'evidence', ['stored_at', 'sha256'])


def downgrade() -> None:
    op.drop_index('ix_evidence_stored_at', table_name='evidence')
    op.drop_table('evidence')
