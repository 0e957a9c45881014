"""grants know their environment (the token's ``environment`` claim)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 10:00:00

A token minted for staging must never pass for one of production (issue 9): every token now carries its grant's
environment. Grants made before this revision take their request's.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('grants', sa.Column('environment', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
    op.execute("UPDATE grants SET environment = (SELECT access_requests.environment FROM access_requests "
               "WHERE access_requests.id = grants.request_id)")
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.alter_column('environment', existing_type=sqlmodel.sql.sqltypes.AutoString(length=255),
                              nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('environment')
