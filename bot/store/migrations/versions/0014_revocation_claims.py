"""revocations fenced by a claim count that never repeats

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 17:00:00

``credentials.claims``: every claim of a revocation counts one and nothing resets it. Its outcome (verified,
retried, failed) and its lease renewals are fenced by it instead of by ``attempts``, which a requeue by hand
(``grantbot credentials reconcile``) starts again at 0: with the attempt number as the fence, a stale worker holding
attempt 1 from before the requeue could record its outcome over the current holder's attempt 1.
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        # Rows claimed before this revision start from their attempt count, so no claim number repeats for them.
        batch_op.add_column(sa.Column('claims', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE credentials SET claims = attempts")


def downgrade() -> None:
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_column('claims')
