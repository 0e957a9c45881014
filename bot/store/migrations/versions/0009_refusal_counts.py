"""refusal counts: repeated refusals are counted per minute before they reach the audit trail

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 06:00:00

Refusals (a bad signature, a bad CI token, a refused click) are audited, at most one event per kind, who and reason
per minute plus one event with the count of the repeats: ``refusal_counts`` holds those counts meanwhile, since
``audit_events`` rows cannot be updated (0007).
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.store.tables


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('refusal_counts',
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('who', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('window_start', bot.store.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('request_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('refusal_counts', schema=None) as batch_op:
        batch_op.create_index('ix_refusal_counts_kind_window_start', ['kind', 'window_start'], unique=False)
        batch_op.create_index(batch_op.f('ix_refusal_counts_window_start'), ['window_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('refusal_counts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refusal_counts_window_start'))
        batch_op.drop_index('ix_refusal_counts_kind_window_start')

    op.drop_table('refusal_counts')
