"""Schema versions: upgrade with Alembic, and tell whether a database is behind the code.

``grantbot migrate`` upgrades; ``grantbot serve`` refuses to start on a database that is behind (the
operator runs the migration as a release step); ``grantbot dev`` and the tests upgrade by themselves.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.store.engine import describe_url, writer

MIGRATIONS = Path(__file__).with_name("migrations")


class SchemaBehind(Exception):
    """The database's schema revision is not the code's; the message says what to run."""


class DatabaseUnreachable(Exception):
    """The database cannot be reached or opened; the message names it (password masked) and why."""


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str | None:
    """The code's schema revision. Cached: Alembic executes every revision file to build its map, and the files
    cannot change under a running process."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _revision_of(connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_revision_of)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` (one transaction on PostgreSQL); :class:`DatabaseUnreachable`.
    A database already at the head is only read (``grantbot dev`` and every start with ``migrate`` on an
    up-to-date database: Alembic's environment and revision files are not loaded)."""
    try:
        async with writer(engine).begin() as conn:
            if revision == "head" and await conn.run_sync(_revision_of) == head_revision():
                return
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
    except (OSError, OperationalError, InterfaceError) as exc:
        raise unreachable(engine, exc) from None
    except DBAPIError as exc:
        if "does not exist" in str(exc.orig) or exc.connection_invalidated:
            raise unreachable(engine, exc) from None
        raise


def unreachable(engine: AsyncEngine, exc: Exception) -> DatabaseUnreachable:
    reason = getattr(exc, "orig", None) or exc
    return DatabaseUnreachable(f"cannot reach the database {describe_url(str(engine.url))}: {reason}")


async def check_current(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaBehind` unless the database is at the code's head revision,
    :class:`DatabaseUnreachable` when it cannot be asked."""
    try:
        current = await current_revision(engine)
    except (OSError, DBAPIError) as exc:
        raise unreachable(engine, exc) from None
    head = head_revision()
    if current != head:
        state = "has no grantbot schema yet" if current is None else f"is at schema revision {current}"
        raise SchemaBehind(
            f"the database {state}, but this grantbot needs revision {head}: run `grantbot migrate` first "
            "(with the same GRANTBOT_DATABASE_URL)"
        )
