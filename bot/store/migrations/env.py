"""Alembic environment: runs on the connection handed over by ``bot.store.schema`` (async engines run it
through ``run_sync``); SQLite gets batch mode so ALTERs work there too."""

from alembic import context
from sqlmodel import SQLModel

from bot.store import tables  # noqa: F401  (registers the tables)

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `grantbot migrate` (it hands Alembic a connection)")

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
