"""real credentials: the accounts providers made for grants and their revocations; the hand-over lease

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 10:00:00

``credentials``: one row per account a provider made for a grant (never its secret), which is also the durable
revocation job, written in the transaction that ends the grant. ``grants.handover_until``: the lease of a caller
setting the secrets of a grant's credentials (hand-over, reissue), which its revocations wait for.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.store.tables


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'credentials',
        sa.Column('target', sa.JSON(), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('created_at', bot.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column('not_before', bot.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('locked_until', bot.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('detail', sa.JSON(), nullable=True),
        sa.Column('revoked_at', bot.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('grant_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('provider', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('username', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('revocation', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('provider', 'username', name='uq_credentials_provider_username'),
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credentials_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index('ix_credentials_revocation_not_before', ['revocation', 'not_before'], unique=False)
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('handover_until', bot.store.tables.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('handover_until')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index('ix_credentials_revocation_not_before')
        batch_op.drop_index(batch_op.f('ix_credentials_grant_id'))
    op.drop_table('credentials')
