"""Training jobs: the queue ``leukonet trainer serve`` works from

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import hub.db.types


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('training_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('worker', sa.String(length=64), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_training_jobs_state', ['state', 'id'], unique=False)
        batch_op.create_index('ix_training_jobs_worker_state', ['worker', 'state'], unique=False)
        # at most one queued or running job per model version (a partial index: final jobs don't count)
        batch_op.create_index('uq_training_jobs_active_model', ['model_name', 'model_version'], unique=True,
                              sqlite_where=sa.text("state IN ('queued', 'running')"),
                              postgresql_where=sa.text("state IN ('queued', 'running')"))



def downgrade() -> None:
    with op.batch_alter_table('training_jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_training_jobs_active_model')
        batch_op.drop_index('ix_training_jobs_worker_state')
        batch_op.drop_index('ix_training_jobs_state')

    op.drop_table('training_jobs')
