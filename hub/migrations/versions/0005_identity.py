"""Identity: users, web sessions, login failures, API tokens, enrollment tokens; agent enrollment

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hub.db.types import UTCDateTime

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('agents') as batch:
        batch.add_column(sa.Column('enrolled_at', UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('revoked_at', UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('credentials_rotated_at', UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        'users',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('failed_logins', sa.Integer(), nullable=False),
        sa.Column('locked_until', UTCDateTime(timezone=True), nullable=True),
        sa.Column('disabled_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('password_changed_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_login_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('username'),
    )
    op.create_table(
        'web_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('remote', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('session_hash'),
    )
    op.create_index('ix_web_sessions_user', 'web_sessions', ['user_id'])
    op.create_table(
        'login_failures',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('at', UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_login_failures_address_at', 'login_failures', ['address', 'at'])
    op.create_table(
        'api_tokens',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_id', sa.String(length=32), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=True),
        sa.Column('agent_id', sa.String(length=64), nullable=True),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_used_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('revoked_at', UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_id'),
    )
    op.create_index('ix_api_tokens_agent', 'api_tokens', ['agent_id'])
    op.create_index('ix_api_tokens_user', 'api_tokens', ['user_id'])
    op.create_table(
        'enrollment_tokens',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_id', sa.String(length=32), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('agent_id', sa.String(length=64), nullable=True),
        sa.Column('lab', sa.String(length=128), nullable=True),
        sa.Column('created_by', sa.String(length=64), nullable=False),
        sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', UTCDateTime(timezone=True), nullable=False),
        sa.Column('used_at', UTCDateTime(timezone=True), nullable=True),
        sa.Column('used_by', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('token_id'),
    )


def downgrade() -> None:
    op.drop_table('enrollment_tokens')
    op.drop_index('ix_api_tokens_user', table_name='api_tokens')
    op.drop_index('ix_api_tokens_agent', table_name='api_tokens')
    op.drop_table('api_tokens')
    op.drop_index('ix_login_failures_address_at', table_name='login_failures')
    op.drop_table('login_failures')
    op.drop_index('ix_web_sessions_user', table_name='web_sessions')
    op.drop_table('web_sessions')
    op.drop_table('users')
    with op.batch_alter_table('agents') as batch:
        batch.drop_column('credentials_rotated_at')
        batch.drop_column('revoked_at')
        batch.drop_column('enrolled_at')
