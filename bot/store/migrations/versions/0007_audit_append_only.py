"""audit events are append-only, enforced by the database

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 22:10:00

The audit trail is what a SIEM and an incident review trust, so the database itself refuses to change or remove
an event once written: UPDATE and DELETE (and TRUNCATE on PostgreSQL) on ``audit_events`` raise. grantbot's code
only ever inserts; a bug, a hand-run statement or a compromised replica's SQL cannot rewrite history without first
dropping the trigger, which needs the table owner's rights (give grantbot a role that does not own its tables to
make that impossible too).
"""
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

MESSAGE = "audit_events is append-only: events cannot be changed or removed"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION grantbot_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'insufficient_privilege';
            END $$""")
        op.execute("CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
                   "FOR EACH ROW EXECUTE FUNCTION grantbot_audit_append_only()")
        op.execute("CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
                   "FOR EACH STATEMENT EXECUTE FUNCTION grantbot_audit_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER audit_events_no_{verb.lower()} BEFORE {verb} ON audit_events "
                       f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION grantbot_audit_append_only()")
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute("DROP TRIGGER audit_events_no_delete")
