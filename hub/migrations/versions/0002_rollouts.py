"""Rollouts: rollouts, targets, history, audit log, agent and lab tags

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import hub.db.types


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agent_tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('agent_id', 'tag', name='uq_agent_tags_agent_tag')
    )
    with op.batch_alter_table('agent_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_agent_tags_agent_id'), ['agent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_agent_tags_tag'), ['tag'], unique=False)

    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject', sa.String(length=256), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.create_index('ix_audit_log_at', ['at'], unique=False)

    op.create_table('lab_tags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('lab', sa.String(length=128), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('lab', 'tag', name='uq_lab_tags_lab_tag')
    )
    with op.batch_alter_table('lab_tags', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lab_tags_lab'), ['lab'], unique=False)
        batch_op.create_index(batch_op.f('ix_lab_tags_tag'), ['tag'], unique=False)

    op.create_table('rollout_history',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('rollout_history', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_history_agent', ['agent_id', 'id'], unique=False)
        batch_op.create_index('ix_rollout_history_rollout', ['rollout_id', 'id'], unique=False)

    op.create_table('rollout_targets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=False),
    sa.Column('agent_id', sa.String(length=64), nullable=False),
    sa.Column('stage', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('previous_model_name', sa.String(length=128), nullable=True),
    sa.Column('previous_model_version', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('failure', sa.Text(), nullable=False),
    sa.Column('desired_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'agent_id', name='uq_rollout_targets_rollout_agent')
    )
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.create_index('ix_rollout_targets_agent_state', ['agent_id', 'state'], unique=False)
        batch_op.create_index('ix_rollout_targets_rollout_stage', ['rollout_id', 'stage'], unique=False)

    op.create_table('rollouts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sa.String(length=64), nullable=False),
    sa.Column('model_name', sa.String(length=128), nullable=False),
    sa.Column('model_version', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('target', sa.JSON(), nullable=False),
    sa.Column('stages', sa.JSON(), nullable=False),
    sa.Column('current_stage', sa.Integer(), nullable=False),
    sa.Column('success_threshold', sa.Float(), nullable=False),
    sa.Column('error_threshold', sa.Float(), nullable=False),
    sa.Column('on_failure', sa.String(length=16), nullable=False),
    sa.Column('timeout_s', sa.Integer(), nullable=False),
    sa.Column('acknowledged_failures', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', hub.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', hub.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id')
    )
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.create_index('ix_rollouts_state', ['state'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rollouts', schema=None) as batch_op:
        batch_op.drop_index('ix_rollouts_state')

    op.drop_table('rollouts')
    with op.batch_alter_table('rollout_targets', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_targets_rollout_stage')
        batch_op.drop_index('ix_rollout_targets_agent_state')

    op.drop_table('rollout_targets')
    with op.batch_alter_table('rollout_history', schema=None) as batch_op:
        batch_op.drop_index('ix_rollout_history_rollout')
        batch_op.drop_index('ix_rollout_history_agent')

    op.drop_table('rollout_history')
    with op.batch_alter_table('lab_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_lab_tags_tag'))
        batch_op.drop_index(batch_op.f('ix_lab_tags_lab'))

    op.drop_table('lab_tags')
    with op.batch_alter_table('audit_log', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_log_at')

    op.drop_table('audit_log')
    with op.batch_alter_table('agent_tags', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_agent_tags_tag'))
        batch_op.drop_index(batch_op.f('ix_agent_tags_agent_id'))

    op.drop_table('agent_tags')
