"""Schema versions: upgrade with Alembic, and tell whether a database is behind the code.

``grantbot migrate`` upgrades; ``grantbot serve`` refuses to start on a database that is behind (the
operator runs the migration as a release step); ``grantbot dev`` and the tests upgrade by themselves.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.engine import writer

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaBehind(Exception):
    """The database's schema revision is not the code's; the message says what to run."""


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (one transaction on PostgreSQL)."""
    async with writer(engine).begin() as conn:
        await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def check_current(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the code's head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        state = "has no grantbot schema yet" if current is None else f"is at schema revision {current}"
        raise SchemaBehind(
            f"the database {state}, but this grantbot needs revision {head}: run `grantbot migrate` first "
            "(with the same GRANTBOT_DATABASE_URL)"
        )
