"""more kinds of real credentials: the pipeline's SSH public key on its access request

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-02 10:00:00

``access_requests.ssh_public_key``: the OpenSSH public key a request may carry (DESIGN.md "Other kinds"), kept until
the grant's certificate is signed for it at the hand-over (an approval can come much later). Public, not a secret.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0013'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ssh_public_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.drop_column('ssh_public_key')
