"""outbox: failures apart from claims, channels' shared pacing and notice budget, digests

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01

A 429 is Slack pacing us, not a failure: ``failures`` counts the attempts that failed, and only it grows an item's
backoff, while ``attempts`` keeps counting claims (they fence a lease). ``outbox_channels`` holds, per Slack
channel, the next write slot every replica takes its turn from, and the notice budget that decides when notices of
auto-approved grants are folded into a digest; ``folded_into`` names the digest that told a folded notice, and
``channel`` where a notice or digest goes.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel
import bot.store.tables


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'outbox_channels',
        sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('next_write', sa.Float(), server_default='0', nullable=False),
        sa.Column('notices_since', bot.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column('notices_told', sa.Integer(), server_default='0', nullable=False),
        sa.Column('next_digest_at', bot.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('channel'),
    )
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failures', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('channel', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('folded_into', sa.Integer(), nullable=True))
    # Items queued before start with no failures: their claim counts mixed 429s in, and a backoff grown from
    # rate limits is what this revision ends.


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('folded_into')
        batch_op.drop_column('channel')
        batch_op.drop_column('failures')
    op.drop_table('outbox_channels')
