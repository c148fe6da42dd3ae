"""Initial schema: agents (with desired state), classifications, model versions, model events.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import hub.db.types


revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('lab', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('device', sa.String(length=64), nullable=True),
    sa.Column('vitals', sa.JSON(), nullable=False),
    sa.Column('last_seen', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('status_sent_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('desired_model_name', sa.String(length=128), nullable=True),
    sa.Column('desired_model_version', sa.String(length=64), nullable=True),
    sa.Column('desired_set_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agent_id')
    )
    op.create_table('classifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('result_id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('lab', sa.String(length=128), nullable=False),
    sa.Column('image_name', sa.String(length=512), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('probabilities', sa.JSON(), nullable=False),
    sa.Column('low_confidence', sa.Boolean(), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('captured_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('result_id')
    )
    with op.batch_alter_table('classifications', schema=None) as batch_op:
        batch_op.create_index('ix_classifications_agent_captured', ['agent_id', 'captured_at'], unique=False)
        batch_op.create_index('ix_classifications_captured_at', ['captured_at'], unique=False)
        batch_op.create_index('ix_classifications_label', ['label'], unique=False)

    op.create_table('model_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('sent_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('model_events', schema=None) as batch_op:
        batch_op.create_index('ix_model_events_agent_sent', ['agent_id', 'sent_at'], unique=False)

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('storage_path', sa.String(length=1024), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_model_versions_name_version')
    )
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_versions_sha256'), ['sha256'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('model_versions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_versions_sha256'))

    op.drop_table('model_versions')
    with op.batch_alter_table('model_events', schema=None) as batch_op:
        batch_op.drop_index('ix_model_events_agent_sent')

    op.drop_table('model_events')
    with op.batch_alter_table('classifications', schema=None) as batch_op:
        batch_op.drop_index('ix_classifications_label')
        batch_op.drop_index('ix_classifications_captured_at')
        batch_op.drop_index('ix_classifications_agent_captured')

    op.drop_table('classifications')
    op.drop_table('agents')
